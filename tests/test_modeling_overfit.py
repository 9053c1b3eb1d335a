"""A small C4 detector overfits a handful of demo ("shapes") images on the CPU.

End-to-end evidence that anchors, labels, losses, sampling, decoding and
post-processing fit together: after training on 4 images, every ground-truth object
is detected (score >= 0.5, IoU >= 0.5, right class). About 1-2 minutes on 2 cores.
"""
import time

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detectron_res.config import load_config
from detectron_res.data.shapes import SHAPES_CLASS_NAMES, render_image
from detectron_res.modeling.build import build_model

OVERFIT_CONFIG = [
    # ResNet-18 at a quarter of the paper's width, BN trained from scratch.
    "model.backbone.depth=18",
    "model.backbone.base_channels=16",
    "model.backbone.norm=BN",
    "model.backbone.freeze_at=0",
    "model.input_format=BGR",
    f"model.roi_heads.num_classes={len(SHAPES_CLASS_NAMES)}",
    # Objects are 16-100 px: smaller anchors, no minimum proposal size.
    "model.anchor.sizes=[32,64,128]",
    "model.rpn.min_size=0",
    "model.rpn.batch_size_per_image=128",
    "model.rpn.pre_nms_topk_train=1000",
    "model.rpn.post_nms_topk_train=200",
    "model.rpn.pre_nms_topk_test=500",
    "model.rpn.post_nms_topk_test=50",
    # res5 per RoI dominates the CPU time: fewer, smaller RoIs.
    "model.roi_heads.batch_size_per_image=32",
    "model.roi_heads.pooler_type=ROIAlignV2",
    "model.roi_heads.pooler_resolution=8",
    "input.min_size_train=[160]",
    "input.max_size_train=200",
    "input.min_size_test=160",
    "input.max_size_test=200",
]


def _demo_images(num_images=4, seed=0):
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(num_images):
        image, objects = render_image(rng, size_range=(128, 160))  # BGR uint8
        objects = [o for o in objects if not o.difficult]  # 6-11 px "difficult" objects are not trained on
        images.append(torch.from_numpy(image).permute(2, 0, 1).float())
        targets.append(
            {
                "boxes": torch.tensor([o.box for o in objects], dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor([o.label for o in objects], dtype=torch.int64),
            }
        )
    return images, targets


def _num_detected(model, images, targets, min_score=0.5, min_iou=0.5):
    model.eval()
    outputs = model(images)
    model.train()
    found = total = 0
    for out, target in zip(outputs, targets):
        keep = out["scores"] >= min_score
        iou = box_iou(target["boxes"], out["boxes"][keep])
        same_class = target["labels"][:, None] == out["labels"][keep][None, :]
        found += int(((iou >= min_iou) & same_class).any(dim=1).sum())
        total += target["boxes"].shape[0]
    return found, total


@pytest.mark.slow
def test_small_c4_model_overfits_demo_images():
    torch.manual_seed(0)
    images, targets = _demo_images()
    model = build_model(load_config(None, OVERFIT_CONFIG)).train()
    params = [p for p in model.parameters() if p.requires_grad]
    base_lr, warmup = 0.04, 50
    optimizer = torch.optim.SGD(params, lr=base_lr, momentum=0.9, weight_decay=1e-4)

    start, history = time.time(), []
    found, total = 0, sum(t["boxes"].shape[0] for t in targets)
    for iteration in range(1, 401):
        for group in optimizer.param_groups:
            group["lr"] = base_lr * min(1.0, iteration / warmup)
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        if iteration % 20 == 0:
            found, total = _num_detected(model, images, targets)
            history.append((iteration, found, {k: round(v.item(), 4) for k, v in losses.items()}))
            if found == total:
                break
    elapsed = time.time() - start
    assert found == total, f"detected {found}/{total} objects after {iteration} iterations ({elapsed:.0f} s): {history}"
    # Regression and classification were both learned, not just one of them.
    assert history[-1][2]["loss_cls"] < 0.2 and history[-1][2]["loss_box_reg"] < 0.2
