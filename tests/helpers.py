"""Pieces several test files share: load a tool by its path, a tiny detector checkpoint,
a thin detector with the speed benchmark's weights.

``tests/`` is on ``sys.path`` when pytest runs (rootdir-relative test modules), so
test files write ``from helpers import load_tool, make_tiny_checkpoint``. The
one-thread setting every test runs under is an autouse fixture in ``conftest.py``.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import nn

from detectron_res.config import config_to_dict, load_config
from detectron_res.engine.checkpoint import save_checkpoint
from detectron_res.modeling.build import build_model

ROOT = Path(__file__).resolve().parent.parent


def load_module(path: str | Path, name: str) -> ModuleType:
    """Execute the Python file ``path`` as a fresh module called ``name``.

    The module is registered in ``sys.modules`` under ``name`` before it runs:
    ``dataclasses`` look a class's module up there while creating the class.
    """
    spec = importlib.util.spec_from_file_location(name, Path(path))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path} as a module: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_tool(name: str, module_name: str | None = None) -> ModuleType:
    """Import ``tools/<name>.py`` by path (``tools/`` is not a package), as a fresh module.

    ``module_name`` defaults to ``_tool_<name>``; give another one where two copies
    of the same tool must coexist in ``sys.modules``.
    """
    return load_module(ROOT / "tools" / f"{name}.py", module_name or f"_tool_{name}")


# Tiny model: ResNet-18 at 1/8 width, test images resized to 64..96 pixels.
TINY_OVERRIDES = [
    "model.backbone.depth=18",
    "model.backbone.base_channels=8",
    "model.roi_heads.num_classes=3",
    "input.min_size_test=64",
    "input.max_size_test=96",
    "model.rpn.pre_nms_topk_test=300",
    "model.rpn.post_nms_topk_test=50",
]
CLASS_NAMES = ["cat", "dog", "car"]


def make_tiny_checkpoint(path, overrides=(), class_names=CLASS_NAMES, seed=0):
    """Save a randomly initialized tiny detector in the engine's checkpoint format.

    The classifier gets a random bias and slightly larger weights than its
    initialization so that scores are spread out (no exact ties, which would make
    orderings implementation-defined) and some exceed 0.5.
    """
    cfg = load_config(None, TINY_OVERRIDES + list(overrides))
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        torch.nn.init.normal_(model.roi_heads.predictor.cls_score.weight, std=0.001)
        torch.nn.init.normal_(model.roi_heads.predictor.cls_score.bias, std=0.3)
    state = {
        "model": model.state_dict(),
        "config": config_to_dict(cfg),
        "class_names": list(class_names),
        "category_ids": list(range(1, len(class_names) + 1)),
        "input": {
            "format": cfg.model.input_format,
            "pixel_mean": list(cfg.model.pixel_mean),
            "pixel_std": list(cfg.model.pixel_std),
        },
        "iteration": 0,
    }
    save_checkpoint(state, path)
    return Path(path)


def shapes_datasets_root(tmp_path_factory, *, num_train: int, num_val: int) -> Path:
    """A fresh ``DETECTRON_RES_DATASETS`` folder holding a small shapes dataset (64x96
    images, seed 3) under ``shapes/``, for tests that start training runs."""
    from detectron_res.data.shapes import generate_shapes_dataset

    root = tmp_path_factory.mktemp("datasets")
    generate_shapes_dataset(str(root / "shapes"), num_train=num_train, num_val=num_val, image_size=(64, 96), seed=3)
    return root


def synthetic_image(height, width, seed=0):
    """A smooth gradient with a few filled rectangles: image-like, deterministic, BGR uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([60 + 120 * xx / max(width, 1), 80 + 100 * yy / max(height, 1), np.full_like(xx, 140.0)], axis=2)
    for _ in range(3):
        x1, y1 = rng.integers(0, max(width - 1, 1)), rng.integers(0, max(height - 1, 1))
        x2 = min(width, x1 + rng.integers(max(width // 6, 1), max(width // 2, 2)))
        y2 = min(height, y1 + rng.integers(max(height // 6, 1), max(height // 2, 2)))
        image[y1:y2, x1:x2] = rng.integers(0, 255, 3)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def reference_detections(model, image_in_model_order, score_thresh):
    """The model called directly: boxes, scores, labels with score >= score_thresh."""
    with torch.no_grad():
        out = model([torch.from_numpy(np.ascontiguousarray(image_in_model_order)).permute(2, 0, 1).float()])[0]
    keep = out["scores"] >= score_thresh
    return out["boxes"][keep].numpy(), out["scores"][keep].numpy(), out["labels"][keep].numpy()


# ---------------------------------------------------------------- a thin detector with benchmark weights
# A thin ResNet C4 detector (a quarter of the paper's widths; the depth and pooler are
# the caller's) so that the speed-equivalence and CUDA checks run in seconds.
THIN_DETECTOR = [
    "model.backbone.base_channels=16",
    "model.backbone.norm=FrozenBN",
    "model.backbone.freeze_at=2",
    "model.backbone.stride_in_1x1=false",
    "model.anchor.sizes=[32,64,128]",
    "model.roi_heads.num_classes=5",
    "model.rpn.pre_nms_topk_test=300",
    "model.rpn.post_nms_topk_test=30",
    "model.rpn.pre_nms_topk_train=300",
    "model.rpn.post_nms_topk_train=60",
    "model.rpn.boundary_threshold=-1",
    "model.roi_heads.batch_size_per_image=16",
    "input.min_size_train=[112]",
    "input.max_size_train=160",
    "input.min_size_test=112",
    "input.max_size_test=160",
]
R50_ALIGN = ("model.backbone.depth=50", "model.roi_heads.pooler_type=ROIAlign")


def thin_detector(*overrides: str) -> nn.Module:
    """A :data:`THIN_DETECTOR` with the speed benchmark's random weights (non-trivial
    FrozenBN statistics, sharp predictor), in training mode."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # the benchmarks package (not installed with detectron_res)
    from benchmarks.detectors import randomize_weights

    model = build_model(load_config(None, THIN_DETECTOR + list(overrides)))
    randomize_weights(model, seed=1)
    with torch.no_grad():
        # The thin res5's features are larger than the full-width one's: soften the
        # class scores so that they spread over (0.05, 1) instead of saturating.
        model.roi_heads.predictor.cls_score.weight.mul_(0.15)
    return model


def two_test_images(device="cpu"):
    """Two images of two sizes (padding and per-image clipping are part of what is compared)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # the benchmarks package
    from benchmarks.detectors import make_images

    return make_images(1, 112, 144, seed=3, device=device) + make_images(1, 128, 96, seed=4, device=device)


# ---------------------------------------------------------------- a toy model for the training loop
# The toy "detector" draws a random subset of its inputs every step (like RoI
# sampling), so exact resume is only possible when the RNG state, the data position,
# the optimizer momentum and the LR schedule are all restored.
W_TRUE = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])


class ToyDetector(nn.Module):
    def __init__(self, nan_at: int | None = None):
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.norm = nn.BatchNorm1d(4)
        self.nan_at = nan_at
        self.calls = 0

    def forward(self, batch):
        x, y = batch
        idx = torch.randperm(len(x))[:6]  # random sampling, as RoI heads do
        pred = self.lin(self.norm(x[idx]))
        loss_a = ((pred - y[idx]) ** 2).mean()
        loss_b = 0.1 * self.lin.weight.abs().sum()
        if self.nan_at is not None and self.calls == self.nan_at:
            loss_a = loss_a * float("nan")
        self.calls += 1
        return {"loss_a": loss_a, "loss_b": loss_b}


class ToyLoader:
    """Infinite, resumable: batch ``i`` depends only on ``i``."""

    def __init__(self, start_iter: int = 0):
        self.start_iter = start_iter

    def __iter__(self):
        i = self.start_iter
        while True:
            g = torch.Generator().manual_seed(1000 + i)
            x = torch.randn(8, 4, generator=g)
            yield x, x @ W_TRUE + 0.01 * torch.randn(8, 1, generator=g)
            i += 1
