"""Parameter and multiply-add counts of a model, per stage, measured on the real model.

Multiply-adds are counted by running the model under
``torch.utils.flop_counter.FlopCounterMode``, which records the FLOPs of every
convolution and matrix product actually executed (``MACs = FLOPs / 2``), so the
numbers follow the code rather than a formula. The ResNet paper's "FLOPs" in
Table 1 are multiply-adds (1.8e9 .. 11.3e9 at 224x224), comparable to ``macs``.

What is not counted: elementwise ops (BN, ReLU, additions), pooling, and RoI
pooling/align (cheap next to the convolutions, and not modelled by the counter).

Stages: by default the direct children of the model, except that a child called
``backbone`` is split into its own children (``backbone.stem``, ``backbone.res2``,
...), so a C4 detector reports ``backbone.stem .. backbone.res4``, ``rpn`` (or
whatever the proposal generator is called) and ``roi_heads``. Work done outside
every stage (e.g. in the model's own ``forward``) is reported as ``"other"``.

Tip: build the model under ``with torch.device("meta"):`` and pass meta inputs to
count a big backbone without computing anything; that does not work for detectors,
whose post-processing (NMS) needs real tensors.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_parameters", "count_macs", "count_c4_detector_macs", "default_stages"]


def default_stages(model: nn.Module) -> List[str]:
    """Qualified names of the stages to report for ``model`` (see the module docstring)."""
    names: List[str] = []
    for name, child in model.named_children():
        if name == "backbone" and any(True for _ in child.children()):
            names += [f"backbone.{sub}" for sub, _ in child.named_children()]
        else:
            names.append(name)
    return names


def _check_stages(model: nn.Module, stages: Sequence[str]) -> Dict[str, nn.Module]:
    modules = dict(model.named_modules())
    for name in stages:
        if name not in modules or name == "":
            raise ValueError(
                f"stage {name!r} is not a submodule of {type(model).__name__}; "
                f"top-level submodules are {', '.join(n for n, _ in model.named_children())}"
            )
    return {name: modules[name] for name in stages}


def count_parameters(
    model: nn.Module, *, stages: Optional[Sequence[str]] = None, trainable_only: bool = False
) -> Dict[str, int]:
    """Number of parameters per stage, plus ``"total"`` (and ``"other"`` if nonzero).

    Args:
        model: any module.
        stages: qualified submodule names; default :func:`default_stages`.
        trainable_only: count only parameters with ``requires_grad``.

    Shared parameters are counted once, in the first stage that holds them.
    """
    stage_modules = _check_stages(model, default_stages(model) if stages is None else stages)
    seen: set = set()
    counts: Dict[str, int] = {}

    def tally(params) -> int:
        n = 0
        for p in params:
            if id(p) in seen or (trainable_only and not p.requires_grad):
                continue
            seen.add(id(p))
            n += p.numel()
        return n

    for name, module in stage_modules.items():
        counts[name] = tally(module.parameters())
    other = tally(model.parameters())
    if other:
        counts["other"] = other
    counts["total"] = sum(counts.values())
    return counts


def count_macs(
    model: nn.Module, inputs: Any, *, stages: Optional[Sequence[str]] = None
) -> Dict[str, int]:
    """Multiply-adds of one forward pass, per stage, plus ``"total"`` (and ``"other"``).

    Args:
        model: run as is (call ``model.eval()`` first to count inference).
        inputs: the forward argument; a tuple is unpacked into positional arguments
            (pass ``(images,)`` to hand over a single tuple or list).
        stages: qualified submodule names; default :func:`default_stages`.

    A stage called several times (or nested in another listed stage) accumulates
    every call; nested stages are also counted in their parents.
    """
    stage_modules = _check_stages(model, default_stages(model) if stages is None else stages)
    counter = FlopCounterMode(display=False)
    flops = {name: 0 for name in stage_modules}
    entry: Dict[str, List[int]] = {name: [] for name in stage_modules}
    handles = []
    for name, module in stage_modules.items():
        # The counter's running total, read on entry and exit, gives the stage's share.
        def pre_hook(_module, _args, name=name):
            entry[name].append(counter.get_total_flops())

        def post_hook(_module, _args, _output, name=name):
            flops[name] += counter.get_total_flops() - entry[name].pop()

        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(post_hook))
    try:
        with torch.no_grad(), counter:
            if isinstance(inputs, tuple):
                model(*inputs)
            else:
                model(inputs)
    finally:
        for h in handles:
            h.remove()
    total = counter.get_total_flops()
    macs = {name: f // 2 for name, f in flops.items()}
    # Top-level stages do not overlap by default; "other" is what ran outside all of them.
    top_level = [n for n in stage_modules if not any(n.startswith(f"{m}.") for m in stage_modules if m != n)]
    other = total - sum(flops[n] for n in top_level)
    if other > 0:
        macs["other"] = other // 2
    macs["total"] = total // 2
    return macs


def count_c4_detector_macs(model: nn.Module, padded_hw: Tuple[int, int], num_rois: int) -> Dict[str, int]:
    """Multiply-adds of one inference of a C4 ``FasterRCNN`` on one image, by part.

    :func:`count_macs` needs a real forward pass of a detector (its NMS needs real
    tensors), where the number of RoIs is whatever the RPN kept. This counts each
    part on a copy of the model on the meta device instead (nothing is computed),
    for a chosen number of RoIs: the trunk at the padded input size
    ``padded_hw = (H, W)``, the RPN head on its ``[1, C, H/16, W/16]`` output, and
    res5 + predictor on ``num_rois`` pooled ``[C, S, S]`` RoIs. Where the model runs
    res5's first conv or its shortcut on the feature map before pooling
    (``model.speed.res5_*_before_pool``, ``roi_heads.convs_moved_before_pool``),
    ``res5`` counts them on the map; ``before_pool_saving`` is what that saves.

    Returns:
        ``{"trunk", "rpn", "res5", "predictor", "total", "before_pool_saving"}``.
    """
    meta = copy.deepcopy(model).to("meta")
    heads = meta.roi_heads
    image = torch.empty(1, 3, *padded_hw, device="meta")
    size = heads.pooler.output_size
    with torch.no_grad():  # the parts' inputs: shapes only
        features = meta.backbone(image)[meta.backbone_feature]
        pooled = torch.empty(num_rois, features.shape[1], size, size, device="meta")
        region = heads.res5(pooled).mean(dim=(2, 3))
    counts = {
        "trunk": count_macs(meta.backbone, image, stages=())["total"],
        "rpn": count_macs(meta.rpn.head, features, stages=())["total"],
        "res5": count_macs(heads.res5, pooled, stages=())["total"],
        "predictor": count_macs(heads.predictor, region, stages=())["total"],
    }
    saving = 0
    for name in heads.convs_moved_before_pool:
        # A 1x1 conv on the Hf x Wf map instead of on num_rois x S' x S' pooled positions (S' = bins it keeps).
        conv = getattr(heads.res5[0], name)
        kept = len(range(0, size, conv.stride[0]))
        saving += conv.in_channels * conv.out_channels * (num_rois * kept * kept - features.shape[2] * features.shape[3])
    counts["res5"] -= saving
    counts["total"] = sum(counts.values())
    counts["before_pool_saving"] = saving
    return counts
