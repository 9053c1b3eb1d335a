"""ImageNet weights in the canonical key space, with the input settings they need.

:func:`load_imagenet_weights` reads a file (or a named download) safely, detects its
format, applies the format's key table and returns :class:`ImageNetWeights`: the
tensors plus the channel order, normalization and bottleneck stride placement the
weights were trained with, and every key that was not converted or filled.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..outputs import atomic_write
from .download import _download, resolve_weights_uri
from .errors import WeightsFormatError, WeightsMismatchError
from .keys import FORMATS, _check_arch, _is_ignorable, _msra_conv_names, infer_arch, is_detectron2_detector, key_table
from .safe_load import _read_file

logger = logging.getLogger(__name__)


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
