"""inference_on_dataset, distributed gathering (pure and with 2 gloo processes),
metrics.json and PR-curve PNGs."""

from __future__ import annotations

import json
import math
import socket
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from detectron_res.evaluation import (
    COCOEvaluator,
    VOCEvaluator,
    inference_on_dataset,
    merge_predictions,
    plot_pr_curves,
    write_metrics,
)
from detectron_res.evaluation.evaluator import to_numpy_prediction

NUM_IMAGES = 5


def tiny_dataset():
    records = []
    for i in range(NUM_IMAGES):
        records.append(SimpleNamespace(
            image_id=f"img{i}", file_name="", height=64, width=64,
            boxes=np.array([[4.0 * i, 4.0, 4.0 * i + 20, 30.0]], np.float32), labels=np.array([1 + i % 2]),
            difficult=np.zeros(1, bool), iscrowd=np.zeros(1, bool),
        ))  # fmt: skip
    return SimpleNamespace(name="tiny_test", records=records, class_names=["a", "b"], category_ids=[1, 2],
                           format="voc", extra={"year": "2012", "split": "val"})  # fmt: skip


def prediction_for(index: int) -> dict:
    """A deterministic prediction for image ``index``: one good box, one poor box."""
    ds = tiny_dataset()
    r = ds.records[index]
    good = torch.as_tensor(r.boxes[0]) + index * 0.5
    bad = torch.tensor([40.0, 40.0, 60.0, 60.0])
    return {
        "boxes": torch.stack([good, bad]),
        "scores": torch.tensor([0.9 - 0.1 * index, 0.35 + 0.1 * index]),
        "labels": torch.tensor([int(r.labels[0]), 1 + (index + 1) % 2]),
    }


class FakeBatch:
    def __init__(self, indices):
        self.indices = list(indices)
        self.image_ids = [f"img{i}" for i in indices]
        self.images = torch.zeros(len(indices), 3, 8, 8)
        self.device = None

    def to(self, device):
        self.device = torch.device(device)
        return self


class FakeModel(nn.Module):
    """Returns the deterministic predictions; records the mode it was called in."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))
        self.calls = []

    def forward(self, batch):
        self.calls.append((self.training, torch.is_inference_mode_enabled(), batch.device))
        out = []
        for i in batch.indices:
            p = prediction_for(i)
            # exercise autocast dtypes: bf16 boxes must be accepted
            p["boxes"] = (p["boxes"] * self.weight).to(torch.get_autocast_dtype("cpu")
                                                       if torch.is_autocast_enabled("cpu") else torch.float32)  # fmt: skip
            out.append(p)
        return out


def batches(indices, batch_size=2):
    return [FakeBatch(indices[i : i + batch_size]) for i in range(0, len(indices), batch_size)]


def reference_metrics():
    ev = VOCEvaluator(tiny_dataset())
    preds = {f"img{i}": to_numpy_prediction(prediction_for(i), image_id=i, num_classes=2) for i in range(NUM_IMAGES)}
    return ev.evaluate_predictions(preds)


def test_inference_on_dataset_single_process():
    model = FakeModel()
    model.train()
    voc = VOCEvaluator(tiny_dataset())
    coco = COCOEvaluator(tiny_dataset())
    results = inference_on_dataset(model, batches(list(range(NUM_IMAGES))), [voc, coco], device="cpu", progress=False)
    assert set(results) == {"voc", "coco"}
    assert json.dumps(results["voc"], sort_keys=True) == json.dumps(reference_metrics(), sort_keys=True)
    assert 0 < results["voc"]["mAP50"] < 100
    assert all(not training and inference for training, inference, _ in model.calls)
    assert model.calls[0][2] == torch.device("cpu")
    assert model.training  # restored
    # AMP on CPU (bf16): same detections up to bf16 rounding of the boxes
    amp = inference_on_dataset(model, batches(list(range(NUM_IMAGES))), voc, device="cpu",
                               amp_dtype=torch.bfloat16, progress=False)  # fmt: skip
    assert amp["voc"]["mAP50"] == pytest.approx(results["voc"]["mAP50"], abs=5.0)
    # a lost image is an error naming how many
    with pytest.raises(ValueError, match="1 of 5 images have no prediction"):
        inference_on_dataset(model, batches([0, 1, 2, 3]), voc, device="cpu", progress=False)


def test_merge_predictions_dedupes_and_checks():
    ids = [f"img{i}" for i in range(NUM_IMAGES)]
    pred = lambda i, s: {"boxes": np.zeros((1, 4), np.float32), "scores": np.array([s], np.float32),  # noqa: E731
                         "labels": np.array([1])}  # fmt: skip
    # what a padded DistributedSampler hands out for 5 images on 2 ranks
    shares = [list(DistributedSampler(range(NUM_IMAGES), num_replicas=2, rank=r, shuffle=False)) for r in range(2)]
    assert sorted(shares[0] + shares[1]) == [0, 0, 1, 2, 3, 4]  # image 0 twice
    per_rank = [{ids[i]: pred(i, 0.1 * r + 0.01 * i) for i in share} for r, share in enumerate(shares)]
    merged = merge_predictions(per_rank, ids, dataset_name="tiny")
    assert list(merged) == ids  # dataset order, each once
    assert merged["img0"]["scores"][0] == pytest.approx(0.0)  # the first rank's copy
    with pytest.raises(ValueError, match=r"dataset 'tiny': 2 of 5 images have no prediction \(e.g. 'img1', 'img3'\)"):
        merge_predictions(per_rank[:1], ids, dataset_name="tiny")
    with pytest.raises(ValueError, match="1 image id\\(s\\) that are not in the dataset"):
        merge_predictions(per_rank + [{"other": pred(0, 0.5)}], ids)


def test_process_checks_outputs():
    ev = VOCEvaluator(tiny_dataset())
    with pytest.raises(ValueError, match="label 3 is outside 1..2"):
        ev.process(["img0"], [{"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([3])}])
    with pytest.raises(ValueError, match=r"boxes have shape \(1, 5\)"):
        ev.process(["img0"], [{"boxes": torch.zeros(1, 5), "scores": torch.ones(1), "labels": torch.tensor([1])}])
    with pytest.raises(ValueError, match="lacks key"):
        ev.process(["img0"], [{"boxes": torch.zeros(1, 4)}])
    with pytest.raises(ValueError, match="2 image ids but 1 outputs"):
        ev.process(["img0", "img1"], [prediction_for(0)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank, world_size, port, out_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        share = list(DistributedSampler(range(NUM_IMAGES), num_replicas=world_size, rank=rank, shuffle=False))
        results = inference_on_dataset(FakeModel(), batches(share), VOCEvaluator(tiny_dataset()), device="cpu",
                                       progress=False)  # fmt: skip
        with open(f"{out_path}.{rank}", "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_lose_and_double_nothing(tmp_path):
    out = str(tmp_path / "result")
    torch.multiprocessing.spawn(_distributed_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    rank0 = json.loads(open(out + ".0").read())
    rank1 = json.loads(open(out + ".1").read())
    assert rank1 == {}  # only rank 0 reports
    assert json.dumps(rank0["voc"], sort_keys=True) == json.dumps(json.loads(json.dumps(reference_metrics())),
                                                                  sort_keys=True)  # fmt: skip


def test_write_metrics_is_atomic_strict_json(tmp_path):
    metrics = {"voc_2007_test": {"voc": {"mAP50": np.float64(76.4), "per_class": {"cat": math.nan}, "n": np.int64(3)}}}
    path = write_metrics(metrics, tmp_path)
    text = path.read_text()
    assert path.name == "metrics.json" and text.count("\n") == 1  # one line: also a JSON-lines record
    assert json.loads(text) == {"voc_2007_test": {"voc": {"mAP50": 76.4, "per_class": {"cat": None}, "n": 3}}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary file left
    with pytest.raises(TypeError, match="cannot write a object"):
        write_metrics({"x": object()}, tmp_path)
    assert json.loads(path.read_text())["voc_2007_test"]["voc"]["mAP50"] == 76.4  # old file intact


def test_plot_pr_curves_writes_one_png_per_class(tmp_path):
    curves = {
        "traffic light": {"precision": np.array([1.0, 0.5, 2 / 3]), "recall": np.array([0.5, 0.5, 1.0]), "ap": 83.3},
        "a/b": {"precision": np.array([np.nan, 1.0]), "recall": np.array([0.0, 1.0]), "ap": math.nan},
        "empty": {"precision": np.zeros(0), "recall": np.zeros(0), "ap": 0.0},
    }
    paths = plot_pr_curves(curves, tmp_path / "pr", prefix="voc_")
    assert [p.name for p in paths] == ["voc_traffic_light.png", "voc_a_b.png", "voc_empty.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

