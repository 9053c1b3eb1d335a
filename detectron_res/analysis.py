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

__all__ = [
    "count_parameters", "count_macs", "count_c4_detector_macs", "default_stages", "ARCH_CHOICES", "analyze_backbone",
    "analyze_detector", "model_report",
]


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


# ----------------------------------------------------------------------------
# Reports of whole models (tools/analyze_model.py)
# ----------------------------------------------------------------------------
_RESNET_ARCHS = {f"resnet{d}": d for d in (18, 34, 50, 101, 152)}
_CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
#: The bare classifiers :func:`analyze_backbone` builds (Tables 1 and 6 of the ResNet paper, VGG-16).
ARCH_CHOICES = tuple(_RESNET_ARCHS) + ("vgg16",) + tuple(f"cifar_resnet{d}" for d in _CIFAR_DEPTHS)


def model_report(model: nn.Module, inputs: Any, description: str, size: Tuple[int, int],
                 stages: Optional[List[str]] = None) -> Dict[str, Any]:
    """Parameters and multiply-adds of ``model`` on ``inputs``, per stage (default
    :func:`default_stages`), as a JSON-ready dict: ``model`` (``description``),
    ``input_size`` (``size``), ``params``, ``trainable_params``, ``macs`` and ``stages``
    ``{name: {params, macs}}`` (``other`` only when something ran outside the stages)."""
    stage_names = default_stages(model) if stages is None else stages
    params = count_parameters(model, stages=stage_names)
    trainable = count_parameters(model, stages=stage_names, trainable_only=True)
    macs = count_macs(model, inputs, stages=stage_names)
    rows = {}
    for name in list(stage_names) + ["other"]:
        if name == "other" and "other" not in params and "other" not in macs:
            continue
        rows[name] = {"params": params.get(name, 0), "macs": macs.get(name, 0)}
    return {
        "model": description,
        "input_size": list(size),
        "params": params["total"],
        "trainable_params": trainable["total"],
        "macs": macs["total"],
        "stages": rows,
    }


def analyze_backbone(arch: str, *, mode: str = "msra", plain: bool = False,
                     input_size: Optional[Tuple[int, int]] = None) -> Dict[str, Any]:
    """:func:`model_report` of a bare ImageNet / CIFAR classifier, built on the meta
    device (nothing is computed).

    Args:
        arch: one of :data:`ARCH_CHOICES`.
        mode: ResNet bottleneck layout, ``"msra"`` (stride in the 1x1: Table 1's
            numbers) or ``"torchvision"`` (stride in the 3x3).
        plain: the plain (non-residual) network of the same depth.
        input_size: ``(H, W)``; default 224 x 224 (ImageNet), 32 x 32 (CIFAR).
    """
    from .modeling.backbone import VGG16, CifarResNet, ResNet

    if arch not in ARCH_CHOICES:
        raise ValueError(f"architecture {arch!r} is not known; expected one of {', '.join(ARCH_CHOICES)}")
    kind = "plain" if plain else "ResNet"
    with torch.device("meta"):
        if arch in _RESNET_ARCHS:
            depth = _RESNET_ARCHS[arch]
            model = ResNet(depth, stride_in_1x1=mode == "msra", num_classes=1000, residual=not plain)
            default_size, description = (224, 224), f"{kind}-{depth} ({mode} layout)"
        elif arch == "vgg16":
            model, default_size, description = VGG16(num_classes=1000), (224, 224), "VGG-16"
        else:
            depth = int(arch[len("cifar_resnet"):])
            model, default_size, description = CifarResNet(depth, residual=not plain), (32, 32), f"CIFAR {kind}-{depth}"
        height, width = input_size or default_size
        images = torch.empty(1, 3, height, width)
    model.eval()
    return model_report(model, images, description, (height, width))


@torch.no_grad()
def _calibrate_batchnorm(model: nn.Module, inputs: Any) -> None:
    """Give every (Frozen)BN the statistics of its input on ``inputs``.

    A randomly initialized detector has BN statistics mean 0 / var 1, so the
    activations grow through the trunk (to ~1e7 at res4 of ResNet-101), the RPN
    regresses every anchor out of the image and no region reaches the RoI head,
    whose cost would then be counted as zero. Normalizing each BN by the
    statistics of its actual input (computed just before it runs) keeps the
    activations as in a trained network, so the RPN returns its usual number of
    proposals. Only the BN statistics change; the counts do not depend on them
    otherwise.
    """
    from .modeling.backbone import FrozenBatchNorm2d

    norms = [m for m in model.modules() if isinstance(m, (FrozenBatchNorm2d, nn.modules.batchnorm._BatchNorm))]

    def set_stats(module, args_):
        x = args_[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))

    handles = [m.register_forward_pre_hook(set_stats) for m in norms if m.running_mean is not None]
    # A conv with a fused FrozenBN (model.speed.fused_frozen_bn) never calls its norm module,
    # so the hook would not run: apply the norms separately while calibrating.
    fused = [m for m in model.modules() if getattr(m, "fuse_frozen_bn", False)]
    for m in fused:
        m.fuse_frozen_bn = False
    try:
        model(inputs)
    finally:
        for h in handles:
            h.remove()
        for m in fused:
            m.fuse_frozen_bn = True


def analyze_detector(cfg: Any, *, input_size: Optional[Tuple[int, int]] = None,
                     name: str = "detector") -> Dict[str, Any]:
    """:func:`model_report` of the detector ``cfg`` builds (random weights, evaluation
    mode) on one random image, plus ``rois``: the regions its RoI head ran on.

    Args:
        cfg: a loaded config (its ``input.*_size_test`` are changed so that the image
            is not rescaled).
        input_size: the network's input ``(H, W)``; default
            ``input.min_size_test`` x ``input.max_size_test``.
        name: how the report names the model (the config file).
    """
    from .modeling.build import build_model

    height, width = input_size or (int(cfg.input.min_size_test), int(cfg.input.max_size_test))
    # Make the preprocessor keep the image at exactly H x W.
    cfg.input.min_size_test = min(height, width)
    cfg.input.max_size_test = max(height, width)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.eval()
    # One image in 0..255, in the config's channel order (the model normalizes it).
    images = [torch.rand(3, height, width) * 255]
    _calibrate_batchnorm(model, images)
    rois: List[int] = []

    def record_rois(_module, args_, kwargs=None):
        # ROIHeads.forward(features, proposals, ...): proposals is a list of [R_i, 4].
        if len(args_) > 1 and isinstance(args_[1], (list, tuple)):
            rois.append(sum(int(p.shape[0]) for p in args_[1] if isinstance(p, torch.Tensor)))

    handle = model.roi_heads.register_forward_pre_hook(record_rois) if hasattr(model, "roi_heads") else None
    try:
        report = model_report(model, (images,), f"{name} ({type(model).__name__})", (height, width))
    finally:
        if handle is not None:
            handle.remove()
    if rois:
        report["rois"] = rois[0]
    return report
