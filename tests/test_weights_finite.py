"""Weights whose tensors hold NaN or infinity are refused at load (issue 17).

They used to load and run ("0 detections", exit 0). The check sits in the two
readers every entry point goes through (``engine.checkpoint.read_checkpoint_file``
and ``weights._read_file``); here through the real command lines that the corpus
(tests/fixtures/bad/cases.yaml: infer, --eval-only, --weights, model.weights) does not
cover: ``--resume``, ``tools/export.py``, the Predictor, and the classifier's reader.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detectron_res.data.shapes import SHAPES_CLASS_NAMES
from detectron_res.engine.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_file, save_checkpoint
from detectron_res.weights import WeightsFormatError, load_imagenet_weights
from helpers import make_tiny_checkpoint
from helpers import load_tool

ROOT = Path(__file__).resolve().parent.parent


def _load_tool(name):
    return load_tool(name, f"finite_{name}")


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """A tiny detector checkpoint with one infinity in res5's last conv weight."""
    folder = tmp_path_factory.mktemp("poisoned")
    # The shapes classes, so that --resume on the shapes dataset gets as far as the weights.
    path = make_tiny_checkpoint(folder / "ok.pth", ["model.roi_heads.num_classes=4"], list(SHAPES_CLASS_NAMES))
    state = load_checkpoint(path)
    key = [k for k in state["model"] if k.endswith("conv2.weight")][-1]
    state["model"][key].view(-1)[7] = float("-inf")
    bad = folder / "model_0000005.pth"
    save_checkpoint({**state, "iteration": 4}, bad)
    return bad, key


def test_reader_names_file_and_tensor(poisoned):
    path, key = poisoned
    with pytest.raises(CheckpointError) as e:
        read_checkpoint_file(path)
    assert str(e.value) == (
        f"{path}: tensor 'model.{key}' holds 1 NaN or infinite value(s) of {load_checkpoint_numel(path, key)}; "
        "refusing weights that are not finite (a diverged run or a corrupt file)"
    )
    assert "\n" not in str(e.value)


def load_checkpoint_numel(path, key):
    return torch.load(path, weights_only=True)["model"][key].numel()


def test_predictor_refuses(poisoned):
    from detectron_res.predictor import Predictor

    path, key = poisoned
    with pytest.raises(CheckpointError, match=rf"tensor 'model\.{key}' holds 1 NaN or infinite"):
        Predictor(path, device="cpu")


def test_resume_refuses_a_non_finite_last_checkpoint(poisoned, tmp_path, capsys, monkeypatch):
    """train_net --resume: the run's last checkpoint is refused with one line, exit 2."""
    from detectron_res.data.shapes import generate_shapes_dataset

    generate_shapes_dataset(str(tmp_path / "datasets" / "shapes"), num_train=2, num_val=1, image_size=(64, 96), seed=3)
    monkeypatch.setenv("DETECTRON_RES_DATASETS", str(tmp_path / "datasets"))
    path, key = poisoned
    out = tmp_path / "run"
    out.mkdir()
    (out / path.name).write_bytes(path.read_bytes())
    (out / "last_checkpoint").write_text(path.name)
    config = load_checkpoint_config(path, tmp_path)
    code = _load_tool("train_net").main(["--config", str(config), "--output-dir", str(out), "--device", "cpu",
                                         "--resume", "data.train=[shapes_train]", "data.test=[]",
                                         "data.num_workers=0"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    line = [ln for ln in err.strip().splitlines() if ln.startswith("error:")][-1]
    assert f"{out / path.name}: tensor 'model.{key}' holds 1 NaN or infinite value(s)" in line, err


def load_checkpoint_config(path, tmp_path):
    """The checkpoint's own config as a YAML file (train_net needs --config)."""
    from detectron_res.config import config_from_dict, save_config

    cfg = config_from_dict(torch.load(path, weights_only=True)["config"])
    config = tmp_path / "config.yaml"
    save_config(cfg, config)
    return config


def test_export_refuses(poisoned, tmp_path, capsys):
    path, key = poisoned
    code = _load_tool("export").main(["--weights", str(path), "--format", "torchscript", "--output",
                                      str(tmp_path / "m.pt")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"tensor 'model.{key}' holds 1 NaN or infinite" in err and "Traceback" not in err
    assert not (tmp_path / "m.pt").exists()


def test_imagenet_weights_with_nan_in_a_pickle(tmp_path):
    """MSRA .pkl blobs (numpy arrays) go through the same check."""
    import pickle

    blobs = {"conv1_w": np.ones((4, 3, 7, 7), np.float32), "res_conv1_bn_s": np.ones(4, np.float32)}
    blobs["conv1_w"][0, 0, 0, 0] = np.nan
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
    with pytest.raises(WeightsFormatError, match=r"R-50\.pkl: tensor 'blobs\.conv1_w' holds 1 NaN or infinite"):
        load_imagenet_weights(path, arch="resnet50", fmt="msra")


def test_finite_weights_still_load(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "ok.pth")
    assert read_checkpoint_file(path)["iteration"] == 0


@pytest.mark.timeout(120)  # a walk that revisits shared objects would hang here
def test_deeply_nested_or_shared_checkpoint_is_walked_once(tmp_path):
    """The finiteness check is iterative and visits shared objects once: a pickle nested
    past the recursion limit, or one list shared 10^9 times over, is checked in a blink."""

    deep = [torch.ones(2)]
    for _ in range(5000):
        deep = [deep]
    shared = [torch.ones(3)] * 10
    for _ in range(8):
        shared = [shared] * 10
    for name, obj in (("deep", deep), ("shared", shared)):
        path = tmp_path / f"{name}.pth"
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(20000)  # for torch.save only: the pickler recurses per level
        try:
            torch.save({"x": obj}, path)
        finally:
            sys.setrecursionlimit(limit)
        try:
            read_checkpoint_file(path)
        except CheckpointError:
            pass  # torch may refuse the depth itself; what matters: no hang, no RecursionError
