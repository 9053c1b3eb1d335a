"""Checkpoint files: atomic writes, retention, pointer, RNG state, errors, fine-tuning loads."""
import random

import numpy as np
import pytest
import torch
from torch import nn

from detectron_res.engine.checkpoint import (
    LAST_CHECKPOINT_FILE,
    Checkpointer,
    CheckpointError,
    atomic_write_bytes,
    capture_rng_state,
    find_last_checkpoint,
    load_checkpoint,
    load_model_weights,
    restore_rng_state,
    save_checkpoint,
)


def small_state(iteration=0):
    return {"format_version": 1, "model": {"w": torch.full((2,), float(iteration))}, "iteration": iteration,
            "rng": capture_rng_state(), "class_names": ["a"], "config": {"seed": 0}}


def test_round_trip_with_weights_only(tmp_path):
    path = tmp_path / "m.pth"
    save_checkpoint(small_state(3), path)
    # the public contract: plain torch.load with the restricted unpickler works
    raw = torch.load(path, weights_only=True)
    assert raw["iteration"] == 3 and raw["class_names"] == ["a"]
    state = load_checkpoint(path)
    assert torch.equal(state["model"]["w"], torch.full((2,), 3.0))


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "m.pth"
    save_checkpoint(small_state(1), path)

    def broken(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, broken)
    assert load_checkpoint(path)["iteration"] == 1  # old content intact
    assert [p.name for p in tmp_path.iterdir()] == ["m.pth"]  # no temporary left behind


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_checkpoint(tmp_path / "missing.pth")

    good = tmp_path / "good.pth"
    save_checkpoint(small_state(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated.pth: cannot read checkpoint"):
        load_checkpoint(truncated)

    plain = tmp_path / "plain.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, plain)  # e.g. an ImageNet state dict
    with pytest.raises(CheckpointError, match="not a detectron_res checkpoint"):
        load_checkpoint(plain)

    future = tmp_path / "future.pth"
    torch.save({"format_version": 99, "model": {}}, future)
    with pytest.raises(CheckpointError, match="format_version=99 is not supported"):
        load_checkpoint(future)

    # messages are one line
    for p in (truncated, plain, future):
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(p)
        assert "\n" not in str(e.value)


def test_checkpointer_keeps_last_k_and_pointer(tmp_path):
    ck = Checkpointer(tmp_path, keep_last=2)
    for it in (9, 19, 29, 39):
        ck.save(f"model_{it:07d}", small_state(it))
    names = sorted(p.name for p in tmp_path.glob("model_*.pth"))
    assert names == ["model_0000029.pth", "model_0000039.pth"]
    assert (tmp_path / LAST_CHECKPOINT_FILE).read_text() == "model_0000039.pth"
    ck.save("model_final", small_state(49))
    ck.save("model_best", small_state(44), update_pointer=False)
    assert find_last_checkpoint(tmp_path).name == "model_final.pth"
    assert load_checkpoint(tmp_path)["iteration"] == 49  # a directory resolves through the pointer
    assert (tmp_path / "model_best.pth").is_file()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))

    # a rank that is not the main process writes nothing
    other = tmp_path / "other"
    assert Checkpointer(other, save_to_disk=False).save("model_final", small_state()) is None
    assert not other.exists()


def test_pointer_to_missing_file(tmp_path):
    (tmp_path / LAST_CHECKPOINT_FILE).write_text("model_0000005.pth")
    with pytest.raises(CheckpointError, match="model_0000005.pth"):
        find_last_checkpoint(tmp_path)


def test_rng_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leaves a cached gaussian in the numpy state
    path = tmp_path / "rng.pth"
    save_checkpoint({"format_version": 1, "model": {}, "rng": capture_rng_state()}, path)
    expected = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    restore_rng_state(load_checkpoint(path)["rng"])
    got = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


class Head(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.cls_score = nn.Linear(8, num_classes + 1)
        self.bbox_pred = nn.Linear(8, 4 * num_classes)


def test_load_model_weights_reports_skipped_class_layers():
    torch.manual_seed(0)
    src, dst = Head(20), Head(3)
    fresh_cls = dst.cls_score.weight.detach().clone()
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}  # DDP prefix is removed
    sd["module.extra"] = torch.zeros(1)
    report = load_model_weights(dst, sd)
    assert torch.equal(dst.body.weight, src.body.weight)
    assert torch.equal(dst.cls_score.weight, fresh_cls)  # re-initialized, not copied
    skipped = {k for k, _, _ in report.skipped_shape}
    assert [(k, a, b) for k, _, a, b in report.shape_mismatch] == report.skipped_shape
    assert skipped == {"cls_score.weight", "cls_score.bias", "bbox_pred.weight", "bbox_pred.bias"}
    assert report.unexpected == ["extra"] and report.missing == []
    text = report.summary()
    assert "cls_score.weight: checkpoint [21, 8] vs model [4, 8]" in text
    with pytest.raises(ValueError, match="cls_score.weight"):
        load_model_weights(Head(3), src.state_dict(), strict_shapes=True)
