"""Detectron2 DETECTOR checkpoints of the C4 family, converted whole.

``model_final_*.pkl`` / ``.pth`` of ``faster_rcnn_R_50_C4_1x`` and the like: backbone,
RPN and res5 head, with the class layout changed from Detectron2's (background LAST)
to this toolkit's (background FIRST). The key prefixes are the table
:data:`~detectron_res.weights.keys.DETECTRON2_DETECTOR_PREFIXES`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from .errors import NotADetectorError, WeightsFormatError, WeightsMismatchError
from .imagenet import _to_tensor
from .keys import _DETECTRON2_IGNORED, DETECTRON2_DETECTOR_PREFIXES, _is_ignorable, infer_arch, is_detectron2_detector
from .safe_load import _read_file


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
    source: str | os.PathLike,
    *,
    build_model: Callable[[Any], nn.Module],
    config: str | os.PathLike = "coco_r50_c4_d2_1x",
    arch: Optional[str] = None,
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """A Detectron2 C4 detector as a checkpoint of this toolkit (``engine/checkpoint.py`` format).

    Args:
        source: the Detectron2 file (see :func:`convert_detectron2_detector`).
        build_model: the detector builder, ``detectron_res.modeling.build.build_model``:
            the converted weights are checked by loading them into the detector it
            builds from ``config``. Passed in, because this package sits below
            ``modeling`` (which imports it to load ImageNet backbones).
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
    from ..config import config_to_dict, load_config
    from ..engine.checkpoint import CHECKPOINT_FORMAT_VERSION, load_all_weights

    converted = convert_detectron2_detector(source)
    if arch is not None and arch != converted["arch"]:
        raise WeightsMismatchError(f"{source}: holds a {converted['arch']} detector, but arch={arch!r} was requested")
    depth = int(converted["arch"][len("resnet"):])
    overrides = [f"model.backbone.depth={depth}", f"model.roi_heads.num_classes={converted['num_classes']}",
                 "model.weights="]  # fmt: skip
    cfg = load_config(config, overrides)
    model = build_model(cfg)
    load_all_weights(
        model,
        converted["state_dict"],
        source=str(source),
        hint=f"config {config} builds another detector",
        allow_unexpected=False,
        error=WeightsMismatchError,
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
