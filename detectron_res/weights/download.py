"""Named weights (``torchvision://NAME``, ``msra://NAME``): their URLs and the download.

Each is downloaded once into the torch hub cache (``$TORCH_HOME/hub/checkpoints``);
offline, the error names the URL to fetch by hand and the path to save it at.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Tuple

import torch

from .errors import WeightsDownloadError

logger = logging.getLogger(__name__)

# torchvision IMAGENET1K_V1 weights (torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url,
# ...). The 8 hex digits in each file name are the start of its SHA-256.
TORCHVISION_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
    "resnet152": "https://download.pytorch.org/models/resnet152-394f9c45.pth",
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
}
# The MSRA Caffe models as converted to Caffe2 blobs by Detectron (tools/pickle_caffe_blobs.py).
MSRA_URLS = {
    "R-50": "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-50.pkl",
    "R-101": "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-101.pkl",
}
_MSRA_ARCHS = {"R-50": "resnet50", "R-101": "resnet101"}


def _hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights_uri(source: str) -> Tuple[Path, Optional[str], Optional[str], str]:
    """Resolve ``torchvision://NAME`` / ``msra://NAME`` or a path.

    Returns ``(local path, fmt or None, arch or None, url or "")``; for URIs the
    path is where the file lives in the torch hub cache (it may not exist yet).
    """
    if source.startswith("torchvision://"):
        name = source[len("torchvision://"):]
        if name not in TORCHVISION_URLS:
            raise ValueError(
                f"unknown weights {source!r}; torchvision:// names are {', '.join(TORCHVISION_URLS)}"
            )
        url = TORCHVISION_URLS[name]
        return _hub_checkpoint_dir() / url.rsplit("/", 1)[1], "torchvision", name, url
    if source.startswith("msra://"):
        name = source[len("msra://"):]
        if name not in MSRA_URLS:
            raise ValueError(f"unknown weights {source!r}; msra:// names are {', '.join(MSRA_URLS)}")
        return _hub_checkpoint_dir() / "MSRA" / f"{name}.pkl", "msra", _MSRA_ARCHS[name], MSRA_URLS[name]
    if "://" in source:
        raise ValueError(
            f"weights {source!r}: unknown scheme; expected a file path, torchvision://NAME or msra://NAME"
        )
    return Path(source).expanduser(), None, None, ""


def _download(uri: str, url: str, dst: Path) -> Path:
    """Download ``url`` to ``dst`` once (torch hub cache); clear error when offline."""
    if dst.is_file():
        return dst
    # torchvision file names embed the first 8 hex digits of the file's SHA-256.
    stem = dst.stem.rsplit("-", 1)
    hash_prefix = stem[1] if len(stem) == 2 and len(stem[1]) == 8 else None
    dst.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Downloading %s from %s to %s", uri, url, dst)
    try:
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=hash_prefix, progress=True)
    except Exception as e:  # URLError, socket timeouts, hash mismatch, disk errors
        raise WeightsDownloadError(
            f"cannot download {uri} from {url} ({type(e).__name__}: {e}); "
            f"fetch that URL by hand and save the file as {dst}"
        ) from e
    return dst
