"""Copying converted weights into a model, with every key accounted for."""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import numpy as np
import torch
from torch import nn

from ..engine.checkpoint import LoadReport
from .errors import WeightsMismatchError
from .imagenet import ImageNetWeights


def _map_key(key: str, prefix_map: Optional[Mapping[str, str]]) -> Optional[str]:
    if prefix_map is None:
        return key
    # Longest matching prefix wins, so {"res5.": ...} beats {"": ...}.
    for src in sorted(prefix_map, key=len, reverse=True):
        if key.startswith(src):
            return prefix_map[src] + key[len(src):]
    return None


def _is_bottleneck(module: nn.Module) -> bool:
    """A bottleneck block: it records its ``stride_in_1x1`` and owns the ``conv1`` the stride may sit on.

    (``ResNet`` and ``FasterRCNN`` record the setting too but own no ``conv1``; basic
    blocks have no setting.) Read from attributes so that this package needs nothing
    from ``detectron_res.modeling``, which imports it.
    """
    return isinstance(getattr(module, "stride_in_1x1", None), bool) and isinstance(
        getattr(module, "conv1", None), nn.Module
    )


def _check_model_layout(model: nn.Module, weights: ImageNetWeights, targets: List[str]) -> None:
    """Refuse a model whose bottleneck stride placement or normalization differs."""
    if weights.stride_in_1x1 is not None:
        # Only bottlenecks have a choice of stride placement; basic blocks are the same either way.
        for name, module in model.named_modules():
            if not _is_bottleneck(module) or not any(f"{name}.".startswith(t) for t in targets):
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
