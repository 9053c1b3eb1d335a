#!/usr/bin/env python
"""Parameters and multiply-adds per stage, measured by running the real model.

A detector from a config (randomly initialized, evaluation mode, one image)::

    python tools/analyze_model.py --config voc07_r101.yaml [section.key=value ...] [--input-size H W] [--json]

A bare backbone (ImageNet classifier; compare with Table 1 of the ResNet paper)::

    python tools/analyze_model.py --arch resnet50 --mode msra            # 3.86e9 multiply-adds
    python tools/analyze_model.py --arch resnet50 --mode torchvision     # 4.09e9
    python tools/analyze_model.py --arch cifar_resnet110 --json          # 32x32 input

Multiply-adds come from ``torch.utils.flop_counter`` (MACs = FLOPs / 2): only
convolutions and matrix products count. For a detector, ``--input-size`` is the
network's input (the config's test resize is set so the image is not rescaled;
default: ``input.min_size_test`` x ``input.max_size_test``), and the per-region
head's cost depends on how many proposals the RPN returns (reported as ``rois``);
with random weights that is usually ``model.rpn.post_nms_topk_test``.
``--json`` prints one JSON object: ``params``, ``trainable_params``, ``macs``,
``input_size``, ``stages`` ({name: {params, macs}}) and, for detectors, ``rois``.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from detectron_res.analysis import count_macs, count_parameters, default_stages
from detectron_res.modeling.backbone import VGG16, CifarResNet, FrozenBatchNorm2d, ResNet

_RESNET_ARCHS = {f"resnet{d}": d for d in (18, 34, 50, 101, 152)}
_CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
ARCH_CHOICES = tuple(_RESNET_ARCHS) + ("vgg16",) + tuple(f"cifar_resnet{d}" for d in _CIFAR_DEPTHS)


def _build_backbone(arch: str, mode: str, plain: bool) -> Tuple[nn.Module, Tuple[int, int], str]:
    """An ImageNet/CIFAR classifier on the meta device (nothing is computed)."""
    with torch.device("meta"):
        if arch in _RESNET_ARCHS:
            model = ResNet(_RESNET_ARCHS[arch], stride_in_1x1=mode == "msra", num_classes=1000, residual=not plain)
            return model, (224, 224), f"{'plain' if plain else 'ResNet'}-{_RESNET_ARCHS[arch]} ({mode} layout)"
        if arch == "vgg16":
            return VGG16(num_classes=1000), (224, 224), "VGG-16"
        depth = int(arch[len("cifar_resnet"):])
        return CifarResNet(depth, residual=not plain), (32, 32), f"CIFAR {'plain' if plain else 'ResNet'}-{depth}"


def _analyze_backbone(args) -> Dict:
    model, default_size, description = _build_backbone(args.arch, args.mode, args.plain)
    height, width = args.input_size or default_size
    model.eval()
    with torch.device("meta"):
        images = torch.empty(1, 3, height, width)
    return _report(model, images, description, (height, width), stages=None)


@torch.no_grad()
def _calibrate_batchnorm(model: nn.Module, inputs) -> None:
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


def _analyze_detector(args, cfg) -> Dict:
    # Imported here: the detector modules are only needed for this path.
    from detectron_res.modeling.build import build_model

    if args.input_size:
        height, width = args.input_size
    else:
        height, width = int(cfg.input.min_size_test), int(cfg.input.max_size_test)
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
        report = _report(model, (images,), f"{args.config} ({type(model).__name__})", (height, width), stages=None)
    finally:
        if handle is not None:
            handle.remove()
    if rois:
        report["rois"] = rois[0]
    return report


def _report(model: nn.Module, inputs, description: str, size: Tuple[int, int], stages: Optional[List[str]]) -> Dict:
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


def _print_table(report: Dict) -> None:
    h, w = report["input_size"]
    print(f"{report['model']}, input {h}x{w}")
    print(f"{'stage':<24}{'params':>14}{'GMACs':>12}")
    for name, row in report["stages"].items():
        if row["params"] == 0 and row["macs"] == 0:
            continue  # parameter-free, matmul-free layers (pools, dropout)
        print(f"{name:<24}{row['params']:>14,}{row['macs'] / 1e9:>12.3f}")
    print(f"{'total':<24}{report['params']:>14,}{report['macs'] / 1e9:>12.3f}")
    print(f"trainable parameters: {report['trainable_params']:,}")
    if "rois" in report:
        print(f"regions run through the RoI head: {report['rois']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Imported lazily in _analyze_detector; the arguments are declared here.
    from detectron_res.config import add_config_arguments

    add_config_arguments(parser, required=False)
    parser.add_argument("--arch", choices=ARCH_CHOICES, help="analyze a bare classifier instead of a config")
    parser.add_argument(
        "--mode",
        choices=("msra", "torchvision"),
        default="msra",
        help="ResNet bottleneck layout: msra = stride in the 1x1 (Table 1 numbers), torchvision = in the 3x3",
    )
    parser.add_argument("--plain", action="store_true", help="the plain (non-residual) network of the same depth")
    parser.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"), help="input height and width")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)

    if (args.arch is None) == (args.config is None):
        parser.error("give exactly one of --config CFG or --arch ARCH")
    if args.arch is not None and args.overrides:
        parser.error(f"config overrides {args.overrides} need --config, not --arch")
    if args.input_size and min(args.input_size) < 32:
        parser.error(f"--input-size must be at least 32x32, got {args.input_size[0]}x{args.input_size[1]}")
    cfg = None
    if args.config is not None:
        from detectron_res.exit_status import config_for_tool

        cfg, status = config_for_tool(args)
        if cfg is None:  # a config mistake (status 2), or --print-config
            return status
    try:
        report = _analyze_backbone(args) if args.arch else _analyze_detector(args, cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
    else:
        _print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
