"""Key tables: how each format names a backbone's tensors, and what a file's keys say.

Every conversion goes through an explicit table ``canonical key -> source key(s)``
(:func:`key_table`), never through heuristic name matching. The canonical names are
those of ``ResNet(depth)`` / ``VGG16()`` (``stem.conv1.weight``,
``res2.0.conv1.norm.running_mean``, ``fc.weight``). The architecture of a file whose
arch is not given is read from its keys (:func:`infer_arch`), and a Detectron2 file is
told to hold a whole detector by its key prefixes (:func:`is_detectron2_detector`).
"""
from __future__ import annotations

import collections
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .errors import WeightsFormatError

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
# Detectron2 detector checkpoints (C4): module prefixes
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
