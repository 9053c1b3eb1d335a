"""CUDA checks of the detector and of the speed benchmark (run by ``benchmarks/gpu.sh``).

Skipped without a GPU. Every test runs on another device too: set
``DETECTRON_RES_TEST_DEVICE=cpu`` to run the same code paths on the CPU (that is
how they were tested before any GPU was at hand).

* fp32 on the device gives the CPU's detections (TF32 switched off);
* the speed options (config keys ``model.fold_frozen_bn``, ``model.speed.*``) give
  the plain detections on the device;
* bf16 autocast inference stays close to fp32 and training steps run in fp32
  and bf16 with finite losses and gradients;
* torchvision's C4 detector with our weights gives our detections on the device;
* ``benchmarks/run.py --quick`` runs end to end on the device.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

# The repository root, for the ``benchmarks`` package (not installed with detectron_res).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.detectors import (  # noqa: E402
    DetectorSpec,
    build_pair,
    make_images,
    make_targets,
    match_detections,
    optimize_for_inference,
    speed_overrides,
)

from detectron_res.precision import autocast  # noqa: E402
from helpers import R50_ALIGN, thin_detector, two_test_images  # noqa: E402

DEVICE = torch.device(os.environ.get("DETECTRON_RES_TEST_DEVICE", "cuda"))

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

@pytest.fixture(autouse=True)
def strict_fp32():
    """Exact fp32 on the GPU: cuDNN convolutions default to TF32 (10-bit mantissa) on Ampere and later."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def thin_model(*overrides):
    """The thin R50 RoIAlign detector of tests/helpers.py, in eval mode."""
    return thin_detector(*R50_ALIGN, *overrides).eval()


def _images(device):
    return two_test_images(device)


def _to_cpu(detections):
    return [{k: v.detach().float().cpu() if v.is_floating_point() else v.cpu() for k, v in d.items()} for d in detections]


def _assert_same(reference, other, *, score_tol=1e-3, box_tol=5e-2, min_agreement=1.0):
    assert sum(len(d["boxes"]) for d in reference) > 0, "no detections to compare"
    stats = match_detections(_to_cpu(reference), _to_cpu(other))
    assert stats["agreement"] >= min_agreement, stats
    assert stats["max_score_diff"] <= score_tol and stats["max_box_diff"] <= box_tol, stats


def test_device_gives_the_cpu_detections():
    model = thin_model()
    reference = model(_images("cpu"))
    on_device = model.to(DEVICE)(_images(DEVICE))
    for d in on_device:
        assert d["boxes"].device.type == DEVICE.type and d["boxes"].dtype == torch.float32
    _assert_same(reference, on_device)


def test_speed_options_keep_the_detections_on_the_device():
    plain = thin_model(*speed_overrides(())).to(DEVICE)
    images = _images(DEVICE)
    reference = plain(images)
    fast = thin_model().to(DEVICE)  # every speed option on: the config's defaults
    for model in (fast, optimize_for_inference(fast)):
        _assert_same(reference, model(images))


def test_bf16_autocast_inference_stays_close_to_fp32():
    model = optimize_for_inference(thin_model().to(DEVICE))
    images = _images(DEVICE)
    reference = model(images)
    with autocast("bf16", DEVICE):
        low = model(images)
    for d in low:
        assert d["boxes"].dtype == torch.float32 and torch.isfinite(d["boxes"]).all()
        assert d["scores"].min() > 0.05 and d["labels"].min() >= 1 and d["labels"].max() <= 5
    # bf16 keeps 8 significant bits: scores move by ~1% and boxes by a pixel or
    # two, which can reorder near-equal scores in NMS; most detections stay.
    stats = match_detections(_to_cpu(reference), _to_cpu(low), iou=0.8)
    assert stats["agreement"] >= 0.6, stats
    assert stats["max_score_diff"] < 0.1, stats


@pytest.mark.parametrize("amp", ["fp32", "bf16"])
def test_training_steps_run_on_the_device(amp):
    images = _images(DEVICE)
    targets = make_targets(images, 5, boxes_per_image=3, seed=5)
    for model in (thin_model(*speed_overrides(())), thin_model().to(memory_format=torch.channels_last)):
        model.to(DEVICE).train()
        params = [p for p in model.parameters() if p.requires_grad]
        before = [p.detach().clone() for p in params]
        optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
        for _ in range(2):
            with autocast(amp, DEVICE):
                losses = model(images, targets)
            assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
            loss = sum(losses.values())
            assert torch.isfinite(loss), losses
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            assert all(p.grad is None or torch.isfinite(p.grad).all() for p in params)
            optimizer.step()
        assert any(not torch.equal(b, p.detach()) for b, p in zip(before, params))


def test_torchvision_c4_gives_our_detections_on_the_device():
    spec = DetectorSpec(depth=50, num_classes=20, min_size=128, max_size=192, num_proposals=12, pre_nms_topk=400)
    ours, tv = build_pair(spec, seed=0)
    ours.to(DEVICE)
    tv.to(DEVICE)
    images = make_images(2, 128, 192, seed=2, device=DEVICE)
    with torch.inference_mode():
        tv_out = tv(images)
    _assert_same(ours(images), tv_out)


@pytest.mark.slow
def test_quick_benchmark_runs_on_the_device(tmp_path):
    from benchmarks import run

    status = run.main(["--quick", "--device", str(DEVICE), "--out", str(tmp_path), "--budget-s", "60"])
    suffix = "cuda" if DEVICE.type == "cuda" else "cpu"
    results = json.loads((tmp_path / f"results_{suffix}.json").read_text())
    assert status == 0, results["errors"]
    assert results["inference"][0]["agreement"]["ours"]["agreement"] == 1.0
    assert results["training"] and results["profile"]["top"] and results["scaling"]["rows"]
    # fp32 and bf16 of both detectors side by side where the device has bf16 (CUDA, AVX512-BF16, AMX).
    if results["bf16"]:
        assert {"ours_bf16", "torchvision_bf16"} <= set(results["inference"][0]["summary"])
        assert "ours bf16 / ours fp32" in results["inference"][0]["bf16_ratios"]
    if DEVICE.type == "cpu":  # the contention part: 4 variants with a busy process beside
        loaded = [r for r in results["training"] if r["contention"]]
        assert loaded and {"ours", "torchvision", "ours_torch_threads"} <= set(loaded[0]["summary"])
    assert (tmp_path / ("RESULTS_GPU.md" if DEVICE.type == "cuda" else "RESULTS.md")).is_file()
