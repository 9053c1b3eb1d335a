"""ImageNet weights for the backbones: import, conversion and loading.

The detector is initialized from an ImageNet classifier (ResNet paper, Appendix A).
Three families of files are read, each through an explicit key table (never by
matching names heuristically):

======================  ==========================================  ==========================
format (``fmt``)        file                                        example key
======================  ==========================================  ==========================
``"torchvision"``       ``resnet18..152-*.pth``, ``vgg16-*.pth``    ``layer1.0.bn1.weight``
``"msra"``              Detectron's ``R-50.pkl``, ``R-101.pkl``     ``res2_0_branch2a_bn_s``
                        (Caffe2 blob names, MSRA Caffe models)
``"detectron2"``        Detectron2 ``.pkl`` (``{"model": ...}``)      ``res2.0.conv1.norm.weight``
``"detectron_res"``     this toolkit's converted ``.pth``           (canonical names)
======================  ==========================================  ==========================

When no ``arch`` is given, :func:`infer_arch` reads it from the keys (ResNet depth
from the number of blocks per stage, Table 1; VGG-16 from its layers).

Detectron2 DETECTOR checkpoints of the C4 family (``model_final_*.pkl`` / ``.pth``
of ``faster_rcnn_R_50_C4_1x`` and the like) convert whole through
:func:`convert_detectron2_detector`: backbone, RPN and res5 head, with the class
layout changed from Detectron2's (background LAST) to this toolkit's (background
FIRST).

The canonical key space is the ``state_dict`` of ``ResNet(depth, num_classes=1000)``
/ ``VGG16(num_classes=1000)`` (``stem.conv1.weight``,
``res2.0.conv1.norm.running_mean``, ``fc.weight``; ``conv1_1.weight``, ``fc6.weight``).

Weights are only meaningful with the input preprocessing and layout they were
trained with, so those travel with them (:class:`ImageNetWeights`):

* torchvision: RGB, mean (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375),
  stride on the bottleneck's 3x3 (``stride_in_1x1=False``).
* MSRA Caffe models: BGR, mean (103.53, 116.28, 123.675), std 1,
  ``stride_in_1x1=True`` (PAPER_FACTS, Table 1 notes).

:func:`load_into` refuses a model whose bottleneck stride placement differs, and
:meth:`ImageNetWeights.check_input_settings` refuses a config whose channel order
or normalization differs.

Safety: ``.pth`` files are read with ``torch.load(..., weights_only=True)``;
``.pkl`` files with :class:`RestrictedUnpickler`, which only rebuilds numpy arrays
and plain containers. A file that would run code when loaded raises
:class:`UnsafeWeightsError`.

Names ``torchvision://resnet50`` and ``msra://R-101`` are downloaded once into the
torch hub cache (``$TORCH_HOME/hub/checkpoints``); offline, the error names the
URL to fetch by hand and the path to save it at.
"""
from __future__ import annotations

import codecs
import collections
import logging
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .engine.checkpoint import LoadReport
from .modeling.backbone.resnet import BottleneckBlock
from .outputs import atomic_write

logger = logging.getLogger(__name__)

__all__ = [
    "ImageNetWeights",
    "LoadReport",
    "load_imagenet_weights",
    "load_into",
    "key_table",
    "torchvision_resnet_key",
    "resolve_weights_uri",
    "infer_arch",
    "is_detectron2_detector",
    "convert_detectron2_detector",
    "DETECTRON2_DETECTOR_PREFIXES",
    "detectron2_detector_checkpoint",
    "NotADetectorError",
    "UnsafeWeightsError",
    "WeightsFormatError",
    "WeightsDownloadError",
    "WeightsMismatchError",
    "RestrictedUnpickler",
    "refused_pickle_reason",
    "torch_error_line",
    "ARCHS",
    "FORMATS",
    "TORCHVISION_URLS",
    "MSRA_URLS",
]


class UnsafeWeightsError(ValueError):
    """A weights file asks to run code (or build arbitrary objects) when loaded."""


class WeightsFormatError(ValueError):
    """A weights file is not in the expected format, or not for the requested arch."""


class WeightsDownloadError(OSError):
    """Named weights could not be downloaded; the message says how to fetch them by hand."""


class WeightsMismatchError(ValueError):
    """Weights and model/config disagree on input format, normalization or layout."""


class NotADetectorError(WeightsFormatError):
    """A Detectron2 file holds a backbone (ImageNet weights), not a whole detector."""


# ----------------------------------------------------------------------------
# Architectures, formats, input settings, URLs
# ----------------------------------------------------------------------------
# Table 1 block counts; "basic" blocks for 18/34, bottlenecks for 50+.
_RESNET_BLOCKS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg16")
FORMATS = ("torchvision", "msra", "detectron2", "detectron_res")

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


@dataclass(frozen=True)
class _InputSettings:
    input_format: str
    pixel_mean: Tuple[float, float, float]
    pixel_std: Tuple[float, float, float]
    stride_in_1x1: bool
    stem_pool: str


_TORCHVISION_SETTINGS = _InputSettings(
    input_format="RGB",
    # torchvision's ImageNet normalization (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) x 255.
    pixel_mean=(123.675, 116.28, 103.53),
    pixel_std=(58.395, 57.12, 57.375),
    stride_in_1x1=False,
    stem_pool="torchvision",
)
_MSRA_SETTINGS = _InputSettings(
    input_format="BGR",
    # PAPER_FACTS: BGR, mean subtracted, std 1 (the std is folded into conv1).
    pixel_mean=(103.53, 116.28, 123.675),
    pixel_std=(1.0, 1.0, 1.0),
    stride_in_1x1=True,
    stem_pool="msra",
)
_SETTINGS_BY_NAME = {"torchvision": _TORCHVISION_SETTINGS, "msra": _MSRA_SETTINGS}

# Caffe's BN + Scale layers are folded into one affine by pickle_caffe_blobs.py; a
# FrozenBN with running_mean 0 and running_var 1 - eps reproduces it exactly.
_FROZEN_BN_EPS = 1e-5
_SAVED_FORMAT_TAG = "detectron_res.imagenet_weights"
_SAVED_FORMAT_VERSION = 1
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def _check_arch(arch: Optional[str], where: str) -> str:
    if arch not in ARCHS:
        raise ValueError(f"{where}: arch {arch!r} is not supported; expected one of {', '.join(ARCHS)}")
    return arch


# ----------------------------------------------------------------------------
# Key tables
# ----------------------------------------------------------------------------
def _resnet_convs(depth: int) -> List[str]:
    """Canonical names of every conv+norm of ``ResNet(depth)`` with option-B shortcuts.

    ``stem.conv1``, then per block ``resS.B.conv1..conv2|3`` and, where the block
    changes shape (first block of res3..res5, and of res2 for bottlenecks),
    ``resS.B.shortcut``.
    """
    block_type, blocks = _RESNET_BLOCKS[depth]
    num_convs = 2 if block_type == "basic" else 3
    names = ["stem.conv1"]
    for stage_index, num_blocks in enumerate(blocks):
        stage = f"res{stage_index + 2}"
        for b in range(num_blocks):
            names += [f"{stage}.{b}.conv{c}" for c in range(1, num_convs + 1)]
            # Option B: projection only where dimensions change (Sec 3.3).
            if b == 0 and (stage != "res2" or block_type == "bottleneck"):
                names.append(f"{stage}.{b}.shortcut")
    return names


def _split_block_conv(conv: str) -> Tuple[int, int, str]:
    """``"res3.1.conv2"`` -> ``(3, 1, "conv2")``."""
    stage, block, layer = conv.split(".")
    return int(stage[len("res"):]), int(block), layer


def _torchvision_conv_names(conv: str) -> Tuple[str, str]:
    """Canonical conv -> (torchvision conv weight key, torchvision BN prefix)."""
    if conv == "stem.conv1":
        return "conv1.weight", "bn1"
    stage, block, layer = _split_block_conv(conv)
    prefix = f"layer{stage - 1}.{block}"  # res2..res5 = layer1..layer4
    if layer == "shortcut":
        return f"{prefix}.downsample.0.weight", f"{prefix}.downsample.1"
    index = layer[len("conv"):]
    return f"{prefix}.conv{index}.weight", f"{prefix}.bn{index}"


def torchvision_resnet_key(key: str) -> str:
    """A ResNet tensor's canonical name -> torchvision's name for it.

    ``stem.conv1.weight`` -> ``conv1.weight``, ``res3.1.conv2.norm.running_var`` ->
    ``layer2.1.bn2.running_var``, ``res4.0.shortcut.norm.bias`` ->
    ``layer3.0.downsample.1.bias`` (the same table :func:`key_table` reads files by;
    the speed benchmark copies a detector's trunk and res5 into torchvision's with it).
    """
    conv, norm, leaf = key.partition(".norm.")
    if not norm:
        conv, _, leaf = key.rpartition(".")
        if leaf not in ("weight", "bias"):  # a bias where a frozen BN was folded into the conv
            raise KeyError(f"no torchvision name for {key!r}: expected <conv>.weight|bias or <conv>.norm.<tensor>")
    weight, bn = _torchvision_conv_names(conv)
    return f"{bn}.{leaf}" if norm else f"{weight[: -len('weight')]}{leaf}"


def _msra_conv_names(conv: str) -> Tuple[str, str]:
    """Canonical conv -> (Caffe2 conv blob prefix, Caffe2 BN blob prefix).

    Caffe layer ``res2a_branch2a`` became blob ``res2_0_branch2a_w`` (block letter ->
    index), its BN ``res2_0_branch2a_bn_{s,b}``; conv1's BN is ``res_conv1_bn``.
    """
    if conv == "stem.conv1":
        return "conv1", "res_conv1_bn"
    stage, block, layer = _split_block_conv(conv)
    branch = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "shortcut": "branch1"}[layer]
    blob = f"res{stage}_{block}_{branch}"
    return blob, f"{blob}_bn"


# VGG-16: torchvision's nn.Sequential indices of the 13 convs and 3 linears.
_VGG16_TORCHVISION = {
    "conv1_1": "features.0", "conv1_2": "features.2",
    "conv2_1": "features.5", "conv2_2": "features.7",
    "conv3_1": "features.10", "conv3_2": "features.12", "conv3_3": "features.14",
    "conv4_1": "features.17", "conv4_2": "features.19", "conv4_3": "features.21",
    "conv5_1": "features.24", "conv5_2": "features.26", "conv5_3": "features.28",
    "fc6": "classifier.0", "fc7": "classifier.3", "fc8": "classifier.6",
}  # fmt: skip


def key_table(arch: str, fmt: str) -> Dict[str, Tuple[str, ...]]:
    """The explicit table ``canonical key -> source key(s)`` for ``arch`` in ``fmt``.

    A value with several names lists alternatives found in different releases of
    the format (the first present is used). An empty tuple means the source has no
    such tensor and the converter synthesizes it (Caffe2 BN has no running stats).
    """
    _check_arch(arch, "key_table")
    table: Dict[str, Tuple[str, ...]] = {}
    if arch == "vgg16":
        if fmt != "torchvision":
            raise ValueError(f"key_table: vgg16 weights are only read in the torchvision format, not {fmt!r}")
        for name, tv in _VGG16_TORCHVISION.items():
            table[f"{name}.weight"] = (f"{tv}.weight",)
            table[f"{name}.bias"] = (f"{tv}.bias",)
        return table

    depth = int(arch[len("resnet"):])
    for conv in _resnet_convs(depth):
        if fmt == "torchvision":
            weight, bn = _torchvision_conv_names(conv)
            table[f"{conv}.weight"] = (weight,)
            for k in _BN_KEYS:
                table[f"{conv}.norm.{k}"] = (f"{bn}.{k}",)
        elif fmt == "msra":
            blob, bn = _msra_conv_names(conv)
            table[f"{conv}.weight"] = (f"{blob}_w",)
            table[f"{conv}.norm.weight"] = (f"{bn}_s",)
            table[f"{conv}.norm.bias"] = (f"{bn}_b",)
            table[f"{conv}.norm.running_mean"] = ()
            table[f"{conv}.norm.running_var"] = ()
        elif fmt == "detectron2":
            # Detectron2 names are this toolkit's canonical names.
            table[f"{conv}.weight"] = (f"{conv}.weight",)
            for k in _BN_KEYS:
                table[f"{conv}.norm.{k}"] = (f"{conv}.norm.{k}",)
        else:
            raise ValueError(f"key_table: no key table for format {fmt!r}; expected torchvision, msra or detectron2")
    if fmt == "torchvision":
        table["fc.weight"], table["fc.bias"] = ("fc.weight",), ("fc.bias",)
    elif fmt == "msra":
        # MSRA Caffe models: "fc1000"; Detectron-trained ImageNet models: "pred".
        table["fc.weight"], table["fc.bias"] = ("fc1000_w", "pred_w"), ("fc1000_b", "pred_b")
    else:
        # Detectron2's ResNet calls its classifier "linear"; its convert-torchvision-to-d2
        # script prefixes every non-"layer" key with "stem.", turning fc into stem.fc.
        table["fc.weight"] = ("linear.weight", "stem.fc.weight", "fc.weight")
        table["fc.bias"] = ("linear.bias", "stem.fc.bias", "fc.bias")
    return table


def _is_ignorable(key: str, fmt: str) -> bool:
    """Source keys that carry no weights and are dropped on purpose (and listed as ignored)."""
    # BN's update counter (torchvision, and Detectron2 files converted from it).
    if key.endswith("num_batches_tracked"):
        return True
    # Detectron training checkpoints keep SGD momentum next to each blob.
    return fmt == "msra" and key.endswith("_momentum")


# ----------------------------------------------------------------------------
# Safe file reading
# ----------------------------------------------------------------------------
def _numpy_globals() -> Dict[Tuple[str, str], Any]:
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: Dict[Tuple[str, str], Any] = {}
    # Pickles name numpy 1.x modules (numpy.core) or numpy 2 ones (numpy._core).
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only numpy arrays, numpy scalars and plain containers.

    Every global a pickle names goes through :meth:`find_class`; anything outside
    the allow-list (``os.system``, ``builtins.eval``, any class) raises
    :class:`UnsafeWeightsError` before it can be called. dict, list, tuple, str,
    bytes, numbers, bool and None need no globals at all.
    """

    _ALLOWED_BUILTINS = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        # Python 3 pickles bytes with protocol <= 2 as _codecs.encode(text, "latin1").
        ("_codecs", "encode"): codecs.encode,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
    }

    def __init__(self, file, *, source: str) -> None:
        # latin1 decodes Python 2 str objects (Detectron's pickles) into the bytes
        # numpy expects when rebuilding arrays.
        super().__init__(file, encoding="latin1")
        self._source = source
        self._allowed = {**self._ALLOWED_BUILTINS, **_numpy_globals()}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        raise UnsafeWeightsError(
            f"{self._source}: refusing to unpickle global '{module}.{name}' "
            "(weight pickles may only contain numpy arrays and plain containers)"
        )


def _load_pickle(path: Path) -> Any:
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, source=str(path)).load()
        except UnsafeWeightsError:
            raise
        except Exception as e:  # truncated or not a pickle at all
            raise WeightsFormatError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from e


def refused_pickle_reason(error: BaseException) -> Optional[str]:
    """What a ``torch.load(weights_only=True)`` error refused, as one short line, or None.

    torch raises ``pickle.UnpicklingError`` with a paragraph whose first line
    advises re-running with ``weights_only=False`` (which would run the file's
    code); what matters is the global the file asked for ("Trying to load
    unsupported GLOBAL posix.system ..."; older versions: "Unsupported global:
    GLOBAL posix.system was not an allowed global ..."). A file naming a global
    outside torch's allow-list would build arbitrary objects or run code when
    unpickled. Returns ``"global 'posix.system'"``; None for other errors
    (truncated, random or foreign bytes: "Unsupported operand 216"), which make a
    file unreadable, not unsafe.
    """
    if not isinstance(error, pickle.UnpicklingError):
        return None
    match = re.search(r"GLOBAL ([\w.]+)", str(error))
    return f"global '{match.group(1).rstrip('.')}'" if match else None


def torch_error_line(error: BaseException) -> str:
    """One informative line of any ``torch.load`` error (for one-line messages)."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "In PyTorch")
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(boilerplate)]
    return f"{type(error).__name__}: {(useful or lines or [''])[0]}".rstrip(": ")


def _load_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated / foreign / unsafe files
        refused = refused_pickle_reason(e)
        if refused is not None:
            raise UnsafeWeightsError(
                f"{path}: refusing to load: the file names {refused}, outside torch.load(weights_only=True)'s "
                "allow-list (weights hold only tensors, numbers, strings and containers; this file would build "
                "other objects or run code when unpickled)"
            ) from None
        raise WeightsFormatError(f"{path}: not a readable torch file ({torch_error_line(e)})") from None


def _read_file(path: Path) -> Any:
    """Read ``path`` with the safe loader its extension (or content) calls for; non-finite
    weights are refused (:func:`refuse_non_finite`)."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".pkl":
        obj = _load_pickle(path)
    elif path.suffix in (".pth", ".pt") or zipfile.is_zipfile(path):
        obj = _load_torch(path)
    else:
        obj = _load_pickle(path)
    refuse_non_finite(obj, path, WeightsFormatError)
    return obj


def _first_non_finite(obj: Any) -> Optional[Tuple[str, int, int]]:
    """``(dotted key, non-finite count, size)`` of the first floating tensor or array in
    ``obj`` (nested dicts / lists, in order) holding NaN or infinity; None when all are finite.

    Iterative, and each container and tensor is visited once (by identity): a pickle
    may nest lists deeper than the recursion limit, or share one list many times over.
    """
    seen: set = set()
    stack: List[Tuple[str, Any]] = [("", obj)]
    while stack:
        key, node = stack.pop()
        if id(node) in seen:
            continue
        if isinstance(node, torch.Tensor):
            seen.add(id(node))
            if node.is_floating_point() or node.is_complex():
                bad = int((~torch.isfinite(node)).sum())
                if bad:
                    return key, bad, node.numel()
        elif isinstance(node, np.ndarray):
            seen.add(id(node))
            if np.issubdtype(node.dtype, np.floating) or np.issubdtype(node.dtype, np.complexfloating):
                bad = int((~np.isfinite(node)).sum())
                if bad:
                    return key, bad, int(node.size)
        elif isinstance(node, (dict, list, tuple)):
            seen.add(id(node))
            items = list(node.items() if isinstance(node, dict) else enumerate(node))
            stack.extend((f"{key}.{k}" if key else str(k), v) for k, v in reversed(items))
    return None


def refuse_non_finite(obj: Any, path: str | os.PathLike, error_type: type = WeightsFormatError) -> None:
    """Refuse weights or a checkpoint holding a NaN or infinite value in any float tensor.

    Such weights load and run, and a detector with them finds nothing ("0 detections",
    exit 0). The one check of every weights and checkpoint reader
    (:func:`_read_file` here, ``engine.checkpoint.read_checkpoint_file``): training
    initialization, resume, inference, export, evaluation, the classifier.

    Raises:
        error_type: one line naming the file, the first such tensor and how many values.
    """
    found = _first_non_finite(obj)
    if found is not None:
        key, bad, size = found
        raise error_type(
            f"{path}: tensor '{key}' holds {bad} NaN or infinite value(s) of {size}; refusing weights that are "
            "not finite (a diverged run or a corrupt file)"
        )


# ----------------------------------------------------------------------------
# Downloads
# ----------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------
@dataclass
class ImageNetWeights:
    """Converted ImageNet weights plus the input settings they were trained with.

    Attributes:
        state_dict: canonical key -> float tensor (see the module docstring).
        arch: "resnet18".."resnet152" or "vgg16".
        input_format: "RGB" or "BGR": channel order of the model input.
        pixel_mean, pixel_std: per-channel normalization in 0..255 units, in
            ``input_format`` order: the model computes ``(x - mean) / std``.
        stride_in_1x1: bottleneck stride placement the weights were trained with
            (None for VGG-16). A model built otherwise is refused by :func:`load_into`.
        stem_pool: the stem's pool1 variant ("msra" or "torchvision"; None for VGG).
        arch_inferred: "" when ``arch`` was given (or implied by a URI), else how it
            was inferred from the keys ("inferred from the keys: bottleneck blocks
            per stage 3, 4, 6, 3").
        unconverted_keys: source keys that the table does not know (not converted).
        missing_keys: canonical keys that the source did not provide.
        ignored_keys: source keys dropped on purpose (BN counters, SGD momentum).
        source: where the weights came from (URI or path).
        fmt: the source format.
    """

    state_dict: Dict[str, torch.Tensor]
    arch: str
    input_format: str
    pixel_mean: Tuple[float, float, float]
    pixel_std: Tuple[float, float, float]
    stride_in_1x1: Optional[bool]
    stem_pool: Optional[str]
    unconverted_keys: List[str] = field(default_factory=list)
    missing_keys: List[str] = field(default_factory=list)
    ignored_keys: List[str] = field(default_factory=list)
    source: str = ""
    fmt: str = ""
    arch_inferred: str = ""  # how ``arch`` was read from the keys when it was not given

    def summary(self) -> str:
        """A few lines: what was converted, and every key that was not."""
        lines = [
            f"{self.source}: {self.arch} weights ({self.fmt}), {len(self.state_dict)} tensors; "
            f"input {self.input_format}, pixel_mean {list(self.pixel_mean)}, pixel_std {list(self.pixel_std)}, "
            f"stride_in_1x1={self.stride_in_1x1}"
        ]
        if self.missing_keys:
            lines.append(f"  {len(self.missing_keys)} keys not filled: {', '.join(self.missing_keys)}")
        if self.unconverted_keys:
            lines.append(f"  {len(self.unconverted_keys)} keys not converted: {', '.join(self.unconverted_keys)}")
        if self.ignored_keys:
            lines.append(f"  {len(self.ignored_keys)} keys ignored on purpose (BN counters / momentum)")
        return "\n".join(lines)

    def model_kwargs(self) -> Dict[str, Any]:
        """Constructor keywords that make a ``ResNet`` match these weights' layout."""
        if self.arch == "vgg16":
            return {}
        return {
            "depth": int(self.arch[len("resnet"):]),
            "stride_in_1x1": self.stride_in_1x1,
            "stem_pool": self.stem_pool,
        }

    def check_input_settings(
        self,
        *,
        input_format: str,
        pixel_mean,
        pixel_std,
        stride_in_1x1: Optional[bool] = None,
        key_prefix: str = "model.",
    ) -> None:
        """Raise :class:`WeightsMismatchError` if a config's input settings differ.

        ``key_prefix`` names the config section in the message (``model.input_format``,
        ``model.pixel_mean``, ``model.pixel_std``, ``model.backbone.stride_in_1x1``).
        Means/stds are compared to 1e-3.
        """
        fix = (
            f"{key_prefix}input_format={self.input_format} "
            f"{key_prefix}pixel_mean=[{','.join(map(str, self.pixel_mean))}] "
            f"{key_prefix}pixel_std=[{','.join(map(str, self.pixel_std))}]"
        )
        if input_format != self.input_format:
            raise WeightsMismatchError(
                f"weights {self.source} expect {self.input_format} input but {key_prefix}input_format is "
                f"{input_format!r}; set {fix}"
            )
        for key, got, want in (("pixel_mean", pixel_mean, self.pixel_mean), ("pixel_std", pixel_std, self.pixel_std)):
            got_list = [float(v) for v in got]
            if len(got_list) != 3 or not np.allclose(got_list, want, atol=1e-3):
                raise WeightsMismatchError(
                    f"weights {self.source} expect {key}={list(want)} but {key_prefix}{key} is {got_list}; set {fix}"
                )
        if stride_in_1x1 is not None and self.stride_in_1x1 is not None and stride_in_1x1 != self.stride_in_1x1:
            raise WeightsMismatchError(
                f"weights {self.source} were trained with stride_in_1x1={self.stride_in_1x1} but "
                f"{key_prefix}backbone.stride_in_1x1 is {stride_in_1x1}; set "
                f"{key_prefix}backbone.stride_in_1x1={self.stride_in_1x1}"
            )

    def save(self, path: str | os.PathLike) -> None:
        """Write the ``detectron_res`` format: a ``.pth`` readable with ``weights_only=True``."""
        state = {
            "format": _SAVED_FORMAT_TAG,
            "version": _SAVED_FORMAT_VERSION,
            "arch": self.arch,
            "input_format": self.input_format,
            "pixel_mean": [float(v) for v in self.pixel_mean],
            "pixel_std": [float(v) for v in self.pixel_std],
            "stride_in_1x1": self.stride_in_1x1,
            "stem_pool": self.stem_pool,
            "converted_from": f"{self.fmt}:{self.source}",
            "state_dict": self.state_dict,
        }
        atomic_write(path, lambda f: torch.save(state, f))


def _to_tensor(value: Any, source: str, key: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
    elif isinstance(value, np.ndarray):
        tensor = torch.from_numpy(np.array(value, copy=True))
    else:
        raise WeightsFormatError(f"{source}: key {key!r} holds a {type(value).__name__}, expected an array")
    return tensor.float() if tensor.is_floating_point() else tensor


def _detect_format(obj: Any, path: Path) -> str:
    """Which of FORMATS a loaded file is in, from its top-level structure and key names."""
    if not isinstance(obj, dict):
        raise WeightsFormatError(f"{path}: expected a dict of weights, got a {type(obj).__name__}")
    if obj.get("format") == _SAVED_FORMAT_TAG:
        return "detectron_res"
    if "blobs" in obj or "conv1_w" in obj or "res_conv1_bn_s" in obj:
        return "msra"
    if isinstance(obj.get("model"), dict):
        return "detectron2"
    if "conv1.weight" in obj or "features.0.weight" in obj:
        return "torchvision"
    sample = ", ".join(list(map(str, obj))[:5])
    raise WeightsFormatError(
        f"{path}: cannot tell the weights format from its keys ({sample}, ...); expected torchvision "
        "(conv1.weight / features.0.weight), msra (conv1_w), detectron2 ({'model': ...}) or a file "
        "written by tools/convert_weights.py; pass fmt=... to say which"
    )


def _source_tensors(obj: Any, fmt: str, path: Path) -> Dict[str, Any]:
    """The flat name -> array dict inside a loaded file of format ``fmt``."""
    if not isinstance(obj, dict):
        raise WeightsFormatError(f"{path}: expected a dict of weights, got a {type(obj).__name__}")
    if fmt == "msra":
        # Detectron checkpoints wrap the blobs ({"blobs": ..., "cfg": ...}); the MSRA
        # ImageNet pickles are the blob dict itself.
        inner = obj.get("blobs", obj)
    elif fmt == "detectron2":
        inner = obj.get("model")
    elif fmt == "detectron_res":
        inner = obj.get("state_dict")
    else:
        inner = obj
    if not isinstance(inner, dict):
        raise WeightsFormatError(f"{path}: not a {fmt} weights file (no dict of tensors where expected)")
    return inner


def _settings_for(fmt: str, obj: Dict[str, Any], path: Path, settings: Optional[str]) -> _InputSettings:
    if settings is not None:
        if settings not in _SETTINGS_BY_NAME:
            raise ValueError(f"settings={settings!r} is not supported; expected 'msra' or 'torchvision'")
        return _SETTINGS_BY_NAME[settings]
    if fmt in ("torchvision", "msra"):
        return _SETTINGS_BY_NAME[fmt]
    # Detectron2 files say who trained the weights in "__author__" (convert-torchvision-to-d2
    # writes "torchvision"); without it the input settings are unknown.
    author = str(obj.get("__author__", ""))
    if author == "torchvision":
        return _TORCHVISION_SETTINGS
    if author.upper() == "MSRA":
        return _MSRA_SETTINGS
    raise WeightsFormatError(
        f"{path}: detectron2 file with __author__={author!r}, so its input format and normalization "
        "are unknown; pass settings='msra' or settings='torchvision' (tools/convert_weights.py --settings)"
    )


def _convert(
    tensors: Dict[str, Any], *, arch: str, fmt: str, path: Path
) -> Tuple[Dict[str, torch.Tensor], List[str], List[str], List[str]]:
    """Apply :func:`key_table`; returns (state_dict, unconverted, missing, ignored)."""
    table = key_table(arch, fmt)
    used: set = set()
    state: Dict[str, torch.Tensor] = {}
    missing: List[str] = []
    for canonical, sources in table.items():
        if not sources:
            continue  # synthesized below (MSRA running statistics)
        present = [s for s in sources if s in tensors]
        if not present:
            missing.append(canonical)
            continue
        used.add(present[0])
        state[canonical] = _to_tensor(tensors[present[0]], str(path), present[0])

    if fmt == "msra":
        for canonical, sources in table.items():
            if sources or not canonical.endswith(".norm.running_mean"):
                continue
            conv = canonical[: -len(".norm.running_mean")]
            scale = state.get(f"{conv}.norm.weight")
            if scale is None:
                missing += [canonical, f"{conv}.norm.running_var"]
                continue
            # Caffe2 stores the folded affine only: mean 0 and var 1 - eps make the
            # FrozenBN scale exactly the stored one.
            state[canonical] = torch.zeros_like(scale)
            state[f"{conv}.norm.running_var"] = torch.full_like(scale, 1.0 - _FROZEN_BN_EPS)
            # pickle_caffe_blobs.py gave every conv a zero bias blob; fold any bias into
            # the norm's shift: s * (Wx + c) + b = s * Wx + (s * c + b).
            blob, _ = _msra_conv_names(conv)
            if f"{blob}_b" in tensors and f"{conv}.norm.bias" in state:
                used.add(f"{blob}_b")
                conv_bias = _to_tensor(tensors[f"{blob}_b"], str(path), f"{blob}_b").reshape(-1)
                state[f"{conv}.norm.bias"] = state[f"{conv}.norm.bias"] + scale * conv_bias
        # Caffe InnerProduct blobs may carry singleton dims: (1, 1, 1000, 2048) -> (1000, 2048).
        if "fc.weight" in state and state["fc.weight"].dim() != 2:
            state["fc.weight"] = state["fc.weight"].reshape(state["fc.weight"].shape[-2], -1)
        if "fc.bias" in state:
            state["fc.bias"] = state["fc.bias"].reshape(-1)

    if len(missing) > len(table) // 2:
        expected = next(s[0] for s in table.values() if s)
        raise WeightsFormatError(
            f"{path}: does not look like {arch} weights in the {fmt} format: {len(missing)} of "
            f"{len(table)} expected tensors are absent (e.g. {expected!r}); check --arch/--from"
        )
    ignored = [k for k in tensors if k not in used and _is_ignorable(k, fmt)]
    unconverted = [k for k in tensors if k not in used and not _is_ignorable(k, fmt)]
    return state, unconverted, missing, ignored


def load_imagenet_weights(
    source: str | os.PathLike,
    *,
    arch: Optional[str] = None,
    fmt: Optional[str] = None,
    settings: Optional[str] = None,
) -> ImageNetWeights:
    """Read ImageNet weights into the canonical key space, with their input settings.

    Args:
        source: a path (``.pth``/``.pt``/``.pkl``), ``torchvision://resnet18..152|vgg16``
            or ``msra://R-50|R-101`` (downloaded into the torch hub cache if needed).
        arch: "resnet18".."resnet152" or "vgg16". Implied by URIs and by files written
            by tools/convert_weights.py; inferred from the keys otherwise
            (:func:`infer_arch`, recorded in ``arch_inferred``).
        fmt: "torchvision", "msra", "detectron2" or "detectron_res"; detected from the
            URI or the file's keys when omitted.
        settings: "msra" or "torchvision": the input settings to attach when the file
            does not determine them (Detectron2 files without ``__author__``).

    Returns:
        :class:`ImageNetWeights`. Keys that could not be converted or filled are
        listed in it (and logged as a warning), never silently dropped.
    """
    source = str(source)
    path, uri_fmt, uri_arch, url = resolve_weights_uri(source)
    if uri_arch is not None:
        if arch is not None and arch != uri_arch:
            raise ValueError(f"weights {source!r} are {uri_arch} weights, but arch={arch!r} was requested")
        arch = uri_arch
        path = _download(source, url, path)
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r} is not supported; expected one of {', '.join(FORMATS)}")
    if uri_fmt is not None and fmt is not None and fmt != uri_fmt:
        raise ValueError(f"weights {source!r} are in the {uri_fmt} format, but fmt={fmt!r} was requested")

    obj = _read_file(path)
    fmt = fmt or uri_fmt or _detect_format(obj, path)
    tensors = _source_tensors(obj, fmt, path)
    if fmt == "detectron2" and is_detectron2_detector(obj):
        raise WeightsFormatError(
            f"{path}: a Detectron2 detector checkpoint, not ImageNet weights; convert it with "
            "tools/convert_weights.py --from detectron2 (it writes a detector checkpoint for --weights)"
        )

    if fmt == "detectron_res":
        saved_arch = obj.get("arch")
        if arch is not None and arch != saved_arch:
            raise ValueError(f"{path}: holds {saved_arch} weights, but arch={arch!r} was requested")
        _check_arch(saved_arch, str(path))
        weights = ImageNetWeights(
            state_dict={k: _to_tensor(v, str(path), k) for k, v in tensors.items()},
            arch=saved_arch,
            input_format=obj["input_format"],
            pixel_mean=tuple(obj["pixel_mean"]),
            pixel_std=tuple(obj["pixel_std"]),
            stride_in_1x1=obj["stride_in_1x1"],
            stem_pool=obj["stem_pool"],
            source=source,
            fmt=fmt,
        )
        return weights

    inferred = ""
    if arch is None:
        arch, evidence = infer_arch(tensors, fmt, where=str(path))
        inferred = f"inferred from the keys: {evidence}"
    _check_arch(arch, str(path))
    input_settings = _settings_for(fmt, obj, path, settings)
    state, unconverted, missing, ignored = _convert(tensors, arch=arch, fmt=fmt, path=path)
    is_vgg = arch == "vgg16"
    weights = ImageNetWeights(
        state_dict=state,
        arch=arch,
        input_format=input_settings.input_format,
        pixel_mean=input_settings.pixel_mean,
        pixel_std=input_settings.pixel_std,
        stride_in_1x1=None if is_vgg else input_settings.stride_in_1x1,
        stem_pool=None if is_vgg else input_settings.stem_pool,
        unconverted_keys=unconverted,
        missing_keys=missing,
        ignored_keys=ignored,
        source=source,
        fmt=fmt,
        arch_inferred=inferred,
    )
    if missing or unconverted:
        logger.warning(weights.summary())
    return weights


# ----------------------------------------------------------------------------
# Architecture inference
# ----------------------------------------------------------------------------
# A residual block's keys in each format: (regex with the stage and block numbers,
# the stage number of res2). Detector prefixes ("backbone.", "roi_heads.") are allowed.
_BLOCK_PATTERNS = {
    "torchvision": (re.compile(r"^layer(\d)\.(\d+)\.conv1\.weight$"), 1),
    "msra": (re.compile(r"^res(\d)_(\d+)_branch2a_w$"), 2),
    "detectron2": (re.compile(r"^(?:backbone\.|roi_heads\.)?res(\d)\.(\d+)\.conv1\.weight$"), 2),
}
# The 3rd conv of a block exists only in bottleneck blocks.
_BOTTLENECK_MARKERS = {
    "torchvision": re.compile(r"^layer1\.0\.conv3\.weight$"),
    "msra": re.compile(r"^res2_0_branch2c_w$"),
    "detectron2": re.compile(r"^(?:backbone\.)?res2\.0\.conv3\.weight$"),
}


def infer_arch(tensors: Mapping[str, Any], fmt: str, *, where: str = "weights") -> Tuple[str, str]:
    """The architecture of a weights dict, from its keys alone.

    ResNets are told apart by their blocks per stage (Table 1: 18 = 2-2-2-2 basic,
    34 = 3-4-6-3 basic, 50 = 3-4-6-3 bottleneck, 101 = 3-4-23-3, 152 = 3-8-36-3);
    VGG-16 by ``features.0.weight`` (torchvision).

    Args:
        tensors: source key -> array (the file's inner dict).
        fmt: "torchvision", "msra" or "detectron2".
        where: the file, for messages.

    Returns:
        ``(arch, evidence)``, e.g. ``("resnet50", "bottleneck blocks per stage 3, 4, 6, 3")``.

    Raises:
        WeightsFormatError: the keys match no architecture of :data:`ARCHS`.
    """
    if fmt == "torchvision" and "features.0.weight" in tensors and "features.28.weight" in tensors:
        return "vgg16", "torchvision VGG layout (features.0 .. features.28)"
    if fmt not in _BLOCK_PATTERNS:
        raise ValueError(f"infer_arch: no block pattern for format {fmt!r}; expected one of {', '.join(_BLOCK_PATTERNS)}")
    pattern, first_stage = _BLOCK_PATTERNS[fmt]
    blocks: Dict[int, int] = collections.defaultdict(int)
    for key in tensors:
        match = pattern.match(str(key))
        if match:
            stage, block = int(match.group(1)) - first_stage, int(match.group(2))
            blocks[stage] = max(blocks[stage], block + 1)
    counts = tuple(blocks.get(i, 0) for i in range(4))
    block_type = "bottleneck" if any(_BOTTLENECK_MARKERS[fmt].match(str(k)) for k in tensors) else "basic"
    for depth, (kind, expected) in _RESNET_BLOCKS.items():
        if kind == block_type and expected == counts:
            return f"resnet{depth}", f"{block_type} blocks per stage {', '.join(map(str, counts))}"
    raise WeightsFormatError(
        f"{where}: cannot infer the architecture from the keys ({block_type} blocks per stage "
        f"{', '.join(map(str, counts))}, none of {', '.join(ARCHS)}); pass --arch / arch="
    )


# ----------------------------------------------------------------------------
# Detectron2 detector checkpoints (C4)
# ----------------------------------------------------------------------------
# Detectron2 GeneralizedRCNN with Res5ROIHeads -> this toolkit's FasterRCNN. The
# backbone's (stem, res2..res4) and the head's res5 names are the same on both
# sides; only the module paths around them differ.
DETECTRON2_DETECTOR_PREFIXES: Dict[str, str] = {
    "backbone.": "backbone.",
    "proposal_generator.rpn_head.conv.": "rpn.head.conv.",
    "proposal_generator.rpn_head.objectness_logits.": "rpn.head.objectness_logits.",
    "proposal_generator.rpn_head.anchor_deltas.": "rpn.head.anchor_deltas.",
    "roi_heads.res5.": "roi_heads.res5.",
    "roi_heads.box_predictor.cls_score.": "roi_heads.predictor.cls_score.",
    "roi_heads.box_predictor.bbox_pred.": "roi_heads.predictor.bbox_pred.",
}
# GeneralizedRCNN's normalization buffers (saved by older Detectron2 versions): the
# config carries them here.
_DETECTRON2_IGNORED = ("pixel_mean", "pixel_std")


def is_detectron2_detector(obj: Any) -> bool:
    """True for a loaded Detectron2 file holding a whole detector (not a backbone).

    Detectron2 names its RPN ``proposal_generator.*``; ours is ``rpn.*``. Both have
    ``roi_heads.*``, so that prefix alone would mistake a bare ``{"model": ...}`` dict
    of one of our own detectors for a Detectron2 checkpoint.
    """
    inner = obj.get("model") if isinstance(obj, dict) else None
    return isinstance(inner, dict) and any(str(k).startswith("proposal_generator.") for k in inner)


def convert_detectron2_detector(source: str | os.PathLike) -> Dict[str, Any]:
    """Convert a Detectron2 C4 detector checkpoint to this toolkit's key space.

    Args:
        source: Detectron2's ``model_final_*.pkl`` (numpy arrays, read with the
            restricted unpickler) or a training ``.pth`` (``{"model": ...}``).

    Returns:
        ``{"state_dict": detector state dict (our keys), "arch": "resnet50" ...
        (inferred from the blocks), "arch_evidence": the block counts read,
        "num_classes": K, "unconverted_keys": [...], "ignored_keys": [...]}``.

    Class layout: Detectron2's ``cls_score`` has ``K + 1`` rows with background LAST
    (row ``K``); ours has background FIRST (row 0), so the rows are rotated by one.
    The class-specific ``bbox_pred`` has ``K * 4`` rows on both sides (neither has
    background deltas), class ``j`` at rows ``4j .. 4j + 3``: kept as is.

    Raises:
        NotADetectorError: not a Detectron2 detector (a backbone, or another format).
        WeightsFormatError: a layout this toolkit's C4 detector cannot hold
            (class-agnostic box regression, FPN).
    """
    path = Path(source)
    obj = _read_file(path)
    if not is_detectron2_detector(obj):
        raise NotADetectorError(
            f"{path}: not a Detectron2 detector checkpoint (expected {{'model': {{...}}}} with "
            "proposal_generator.* and roi_heads.* keys); ImageNet backbones convert without a detector"
        )
    tensors = obj["model"]
    if any(str(k).startswith(("backbone.bottom_up.", "roi_heads.box_head.")) for k in tensors):
        raise WeightsFormatError(
            f"{path}: an FPN / box-head detector (backbone.bottom_up.*, roi_heads.box_head.*); only the C4 "
            "family (Res5ROIHeads: roi_heads.res5.*) has this toolkit's architecture"
        )
    arch, evidence = infer_arch(tensors, "detectron2", where=str(path))
    state: Dict[str, torch.Tensor] = {}
    unconverted: List[str] = []
    ignored: List[str] = []
    for key, value in tensors.items():
        key = str(key)
        if key in _DETECTRON2_IGNORED or _is_ignorable(key, "detectron2"):
            ignored.append(key)
            continue
        prefix = next((p for p in DETECTRON2_DETECTOR_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            unconverted.append(key)
            continue
        state[DETECTRON2_DETECTOR_PREFIXES[prefix] + key[len(prefix):]] = _to_tensor(value, str(path), key)

    for layer in ("cls_score", "bbox_pred"):
        if f"roi_heads.predictor.{layer}.weight" not in state:
            raise WeightsFormatError(f"{path}: no roi_heads.box_predictor.{layer}.weight; not a Faster R-CNN checkpoint")
    num_classes = state["roi_heads.predictor.cls_score.weight"].shape[0] - 1
    num_deltas = state["roi_heads.predictor.bbox_pred.weight"].shape[0]
    if num_deltas != 4 * num_classes:
        raise WeightsFormatError(
            f"{path}: roi_heads.box_predictor.bbox_pred has {num_deltas} outputs for {num_classes} classes; "
            f"expected {4 * num_classes} (class-specific box regression; class-agnostic is not supported)"
        )
    for key in ("roi_heads.predictor.cls_score.weight", "roi_heads.predictor.cls_score.bias"):
        # [c_1 .. c_K, background] -> [background, c_1 .. c_K]
        state[key] = torch.cat([state[key][-1:], state[key][:-1]])
    return {
        "state_dict": state,
        "arch": arch,
        "arch_evidence": evidence,
        "num_classes": int(num_classes),
        "unconverted_keys": unconverted,
        "ignored_keys": ignored,
    }


def detectron2_detector_checkpoint(
    source: str | os.PathLike, *, config: str | os.PathLike = "coco_r50_c4_d2_1x", arch: Optional[str] = None
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """A Detectron2 C4 detector as a checkpoint of this toolkit (``engine/checkpoint.py`` format).

    Args:
        source: the Detectron2 file (see :func:`convert_detectron2_detector`).
        config: the config the detector runs with (default Detectron2's R50-C4
            recipe); its ``model.backbone.depth`` and ``model.roi_heads.num_classes``
            are set from the checkpoint and ``model.weights`` is emptied.
        arch: if given, must equal the architecture read from the keys.

    Returns:
        ``(checkpoint, converted)``: the dict to save with
        :func:`~detectron_res.engine.checkpoint.save_checkpoint` (``format_version``,
        ``model``, ``config``, ``input``, ``converted_from``), and
        :func:`convert_detectron2_detector`'s result.

    Raises:
        WeightsMismatchError: the model built from ``config`` does not take these
            weights (a shape or a key differs: e.g. anchors per location).
    """
    from .config import config_to_dict, load_config
    from .engine.checkpoint import CHECKPOINT_FORMAT_VERSION, load_model_weights
    from .modeling.build import build_model

    converted = convert_detectron2_detector(source)
    if arch is not None and arch != converted["arch"]:
        raise WeightsMismatchError(f"{source}: holds a {converted['arch']} detector, but arch={arch!r} was requested")
    depth = int(converted["arch"][len("resnet"):])
    overrides = [f"model.backbone.depth={depth}", f"model.roi_heads.num_classes={converted['num_classes']}",
                 "model.weights="]  # fmt: skip
    cfg = load_config(config, overrides)
    model = build_model(cfg)
    try:
        report = load_model_weights(model, converted["state_dict"], strict_shapes=True)
    except ValueError as e:
        raise WeightsMismatchError(f"{source}: {e}; config {config} builds another detector") from None
    if report.missing or report.unexpected:
        first = (report.missing or report.unexpected)[0]
        raise WeightsMismatchError(
            f"{source}: {len(report.missing)} weights of the model built from config {config} are not in the "
            f"checkpoint and {len(report.unexpected)} of the checkpoint are not in the model (first: {first!r})"
        )
    checkpoint = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model": converted["state_dict"],
        "config": config_to_dict(cfg),
        "input": {"format": str(cfg.model.input_format), "pixel_mean": list(cfg.model.pixel_mean),
                  "pixel_std": list(cfg.model.pixel_std)},  # fmt: skip
        "converted_from": f"detectron2:{source}",
    }
    return checkpoint, converted


# ----------------------------------------------------------------------------
# Loading into a model
# ----------------------------------------------------------------------------
def _map_key(key: str, prefix_map: Optional[Mapping[str, str]]) -> Optional[str]:
    if prefix_map is None:
        return key
    # Longest matching prefix wins, so {"res5.": ...} beats {"": ...}.
    for src in sorted(prefix_map, key=len, reverse=True):
        if key.startswith(src):
            return prefix_map[src] + key[len(src):]
    return None


def _check_model_layout(model: nn.Module, weights: ImageNetWeights, targets: List[str]) -> None:
    """Refuse a model whose bottleneck stride placement or normalization differs."""
    if weights.stride_in_1x1 is not None:
        # Only bottlenecks have a choice of stride placement; basic blocks are the same either way.
        for name, module in model.named_modules():
            if not isinstance(module, BottleneckBlock) or not any(f"{name}.".startswith(t) for t in targets):
                continue
            if module.stride_in_1x1 != weights.stride_in_1x1:
                raise WeightsMismatchError(
                    f"weights {weights.source} were trained with stride_in_1x1={weights.stride_in_1x1} but the "
                    f"model's block {name} has stride_in_1x1={module.stride_in_1x1}; build it with "
                    f"stride_in_1x1={weights.stride_in_1x1} (config: model.backbone.stride_in_1x1)"
                )
    fmt = getattr(model, "input_format", None)
    if isinstance(fmt, str) and fmt != weights.input_format:
        raise WeightsMismatchError(
            f"weights {weights.source} expect {weights.input_format} input but the model's input_format is "
            f"{fmt!r} (config: model.input_format)"
        )
    for key, want in (("pixel_mean", weights.pixel_mean), ("pixel_std", weights.pixel_std)):
        have = getattr(model, key, None)
        if isinstance(have, torch.Tensor):
            have = have.detach().cpu().reshape(-1).tolist()
        if not isinstance(have, (list, tuple)) or len(have) != 3:
            continue  # the model does not record its normalization
        if not np.allclose([float(v) for v in have], want, atol=1e-3):
            raise WeightsMismatchError(
                f"weights {weights.source} expect {key}={list(want)} but the model has "
                f"{[float(v) for v in have]} (config: model.{key})"
            )


@torch.no_grad()
def load_into(
    model: nn.Module,
    weights: ImageNetWeights,
    *,
    prefix_map: Optional[Mapping[str, str]] = None,
    check_layout: bool = True,
) -> LoadReport:
    """Copy ``weights`` into ``model`` and report every key that was not used.

    Args:
        model: e.g. ``ResNet(50, stride_in_1x1=True, norm="FrozenBN")`` or a detector.
        weights: from :func:`load_imagenet_weights`.
        prefix_map: weights-key prefix -> model-key prefix. Weights keys matching no
            prefix are not loaded (reported as unexpected), and only model keys under
            the target prefixes count as missing. Example for a C4 detector::

                {"stem.": "backbone.stem.", "res2.": "backbone.res2.",
                 "res3.": "backbone.res3.", "res4.": "backbone.res4.",
                 "res5.": "roi_heads.res5."}

            ``None`` maps every key to itself.
        check_layout: refuse (:class:`WeightsMismatchError`) a model whose bottleneck
            blocks have another ``stride_in_1x1`` than the weights, or whose
            ``input_format`` / ``pixel_mean`` / ``pixel_std`` attributes differ.

    Returns:
        :class:`LoadReport`. Nothing is hidden: the caller decides what is acceptable.
    """
    targets = [""] if prefix_map is None else list(prefix_map.values())
    if check_layout:
        _check_model_layout(model, weights, targets)
    model_state = model.state_dict()
    report = LoadReport()
    to_load: Dict[str, torch.Tensor] = {}
    for key, value in weights.state_dict.items():
        model_key = _map_key(key, prefix_map)
        if model_key is None or model_key not in model_state:
            report.unexpected.append(key)
            continue
        if tuple(model_state[model_key].shape) != tuple(value.shape):
            report.shape_mismatch.append((key, model_key, tuple(value.shape), tuple(model_state[model_key].shape)))
            continue
        to_load[model_key] = value
    for model_key in model_state:
        if model_key in to_load or not any(model_key.startswith(t) for t in targets):
            continue
        if model_key.endswith("num_batches_tracked"):
            report.ignored.append(model_key)
        else:
            report.missing.append(model_key)
    result = model.load_state_dict(to_load, strict=False)
    # Every key handed over exists in the model, by construction above.
    assert not result.unexpected_keys, result.unexpected_keys
    report.loaded = sorted(to_load)
    return report
