"""Tests of detectron_res.predictor: the Python inference API.

The model is a tiny, randomly initialized ResNet-18 C4 detector saved in the
training engine's checkpoint format; the reference for every comparison is the
``FasterRCNN`` module called directly on independently decoded pixels.
"""

import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detectron_res.modeling.build import build_model
from helpers import CLASS_NAMES, make_tiny_checkpoint, reference_detections, synthetic_image

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model_final.pth")


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    from detectron_res.predictor import Predictor

    return Predictor(tiny_checkpoint, device="cpu", precision="fp32", score_thresh=0.1)


@pytest.fixture(scope="module")
def reference_model(tiny_checkpoint):
    """The same weights loaded by hand, without the Predictor (not folded)."""
    from detectron_res.config import config_from_dict
    from detectron_res.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint)
    cfg = config_from_dict(ckpt["config"])
    cfg.model.roi_heads.score_thresh_test = 0.05
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"])
    return model.eval()


def test_matches_model_on_path_bgr_and_rgb(predictor, reference_model, tmp_path):
    image = synthetic_image(90, 130, seed=1)
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), image)
    boxes, scores, labels = reference_detections(reference_model, image, 0.1)
    assert len(boxes) > 0, "the test model should detect something on this image"
    from_path = predictor(str(path))
    from_bgr = predictor(image)
    from_rgb = predictor(image[:, :, ::-1], format="RGB")
    for det in (from_path, from_bgr, from_rgb):
        assert det.image_size == (90, 130)
        assert det.boxes.dtype == np.float32 and det.boxes.shape == (len(boxes), 4)
        assert det.labels.dtype == np.int64 and det.scores.dtype == np.float32
        # Folding FrozenBN into the convs changes float rounding only.
        np.testing.assert_allclose(det.boxes, boxes, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(det.scores, scores, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(det.labels, labels)
        assert det.class_names == [CLASS_NAMES[l - 1] for l in labels]
        assert np.all(np.diff(det.scores) <= 0)


def test_batch_equals_single(predictor):
    images = [synthetic_image(70, 100, seed=s) for s in range(3)]
    batch = predictor(images)
    assert isinstance(batch, list) and len(batch) == 3
    for image, det in zip(images, batch):
        single = predictor(image)
        np.testing.assert_allclose(det.boxes, single.boxes, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(det.labels, single.labels)


def test_batch_size_groups_forward_passes(tiny_checkpoint):
    from detectron_res.predictor import Predictor

    pred = Predictor(tiny_checkpoint, device="cpu", precision="fp32", score_thresh=0.1, batch_size=2)
    calls = []
    original = pred.model.forward
    pred.model.forward = lambda images, *a, **k: calls.append(len(images)) or original(images, *a, **k)
    images = [synthetic_image(64, 64, seed=s) for s in range(5)]
    results = pred(images)
    assert calls == [2, 2, 1] and len(results) == 5


def test_score_threshold(tiny_checkpoint, reference_model):
    from detectron_res.predictor import Predictor

    image = synthetic_image(80, 120, seed=2)
    high = Predictor(tiny_checkpoint, device="cpu", precision="fp32", score_thresh=0.5)(image)
    # Below the config's score_thresh_test (0.05), the model threshold is lowered too.
    low = Predictor(tiny_checkpoint, device="cpu", precision="fp32", score_thresh=0.01)(image)
    assert np.all(high.scores >= 0.5) and np.all(low.scores >= 0.01)
    assert len(low) > len(high)
    assert np.any(low.scores < 0.05)
    _, ref_scores, _ = reference_detections(reference_model, image, 0.5)
    np.testing.assert_allclose(high.scores, ref_scores, rtol=1e-4, atol=1e-5)


def test_detections_to_list(predictor):
    det = predictor(synthetic_image(80, 120, seed=1))
    items = det.to_list()
    assert len(items) == len(det)
    for item, box, label in zip(items, det.boxes, det.labels):
        assert set(item) == {"box", "score", "label", "class_name"}
        assert item["label"] == int(label) and item["class_name"] == CLASS_NAMES[label - 1]
        np.testing.assert_allclose(item["box"], box, atol=1e-3)


def test_array_kinds(predictor):
    gray = synthetic_image(60, 80, seed=3)[:, :, 1]
    det_gray = predictor(gray)
    det_3 = predictor(np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_allclose(det_gray.boxes, det_3.boxes)
    bgra = np.dstack([synthetic_image(60, 80, seed=4), np.full((60, 80), 7, np.uint8)])
    np.testing.assert_allclose(predictor(bgra).boxes, predictor(bgra[:, :, :3]).boxes)
    with pytest.raises(TypeError, match=r"uint16"):
        predictor(np.zeros((10, 10, 3), np.uint16))
    with pytest.raises(ValueError, match=r"'BGR' or 'RGB'"):
        predictor(gray, format="GBR")
    with pytest.raises(ValueError, match=r"\(10, 10, 2\)"):
        predictor(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(TypeError, match=r"list"):
        predictor([[1, 2, 3]])


def test_rgb_model_reads_files_in_rgb(tmp_path):
    from detectron_res.predictor import Predictor

    ckpt = make_tiny_checkpoint(
        tmp_path / "rgb.pth", ["model.input_format=RGB", "model.pixel_mean=[123.675,116.28,103.53]"]
    )
    pred = Predictor(ckpt, device="cpu", precision="fp32", score_thresh=0.1)
    assert pred.input_format == "RGB"
    image = synthetic_image(70, 90, seed=5)
    cv2.imwrite(str(tmp_path / "x.png"), image)
    from_file = pred(str(tmp_path / "x.png"))
    from_rgb = pred(image[:, :, ::-1].copy(), format="RGB")
    np.testing.assert_allclose(from_file.boxes, from_rgb.boxes)
    np.testing.assert_allclose(from_file.boxes, pred(image).boxes)  # BGR array converted for the model


def test_config_and_overrides(tiny_checkpoint, tmp_path):
    from detectron_res.config import ConfigError
    from detectron_res.predictor import Predictor

    pred = Predictor(tiny_checkpoint, device="cpu", overrides=["input.min_size_test=32", "input.max_size_test=48"])
    assert pred.cfg.input.min_size_test == 32 and pred.model.preprocessor.min_size[False] == 32
    with pytest.raises(ConfigError, match=r"input\.min_sizetest"):
        Predictor(tiny_checkpoint, device="cpu", overrides=["input.min_sizetest=3"])
    with pytest.raises(ValueError, match=r"num_classes"):
        Predictor(tiny_checkpoint, device="cpu", overrides=["model.roi_heads.num_classes=5"])
    with pytest.raises(ValueError, match=r"model_final\.pth: weight 'backbone\.stem\.conv1\.weight'.*does not match"):
        Predictor(tiny_checkpoint, device="cpu", overrides=["model.backbone.base_channels=16"])
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        Predictor(tmp_path / "missing.pth", device="cpu")
    with pytest.raises(ValueError, match=r"score_thresh"):
        Predictor(tiny_checkpoint, score_thresh=1.5)


def _make_run(root, name, mtime):
    run = Path(root) / name
    run.mkdir(parents=True)
    (run / "model_final.pth").write_bytes(b"x")
    (run / "last_checkpoint").write_text("model_final.pth")
    os.utime(run / "last_checkpoint", (mtime, mtime))
    return run / "model_final.pth"


def test_find_latest_checkpoint(tmp_path, monkeypatch):
    from detectron_res.predictor import find_latest_checkpoint

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DETECTRON_RES_OUTPUT", raising=False)
    assert find_latest_checkpoint() is None
    now = time.time()
    _make_run("output", "old", now - 100)
    newest = _make_run("output", "new", now - 10)
    broken = Path("output/broken")
    broken.mkdir()
    (broken / "last_checkpoint").write_text("model_0000009.pth")  # names a missing file: skipped
    assert find_latest_checkpoint().resolve() == newest.resolve()
    # $DETECTRON_RES_OUTPUT is searched as well.
    env_newest = _make_run(tmp_path / "elsewhere", "run", now)
    monkeypatch.setenv("DETECTRON_RES_OUTPUT", str(tmp_path / "elsewhere"))
    assert find_latest_checkpoint().resolve() == env_newest.resolve()


def test_default_weights_and_no_model_message(tiny_checkpoint, tmp_path, monkeypatch):
    from detectron_res.predictor import NoCheckpointError, Predictor

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DETECTRON_RES_OUTPUT", raising=False)
    with pytest.raises(NoCheckpointError, match=r"make demo"):
        Predictor(device="cpu")
    run = tmp_path / "output" / "tiny"
    run.mkdir(parents=True)
    (run / "model_final.pth").write_bytes(Path(tiny_checkpoint).read_bytes())
    (run / "last_checkpoint").write_text("model_final.pth")
    assert Predictor(device="cpu").checkpoint_path.resolve() == (run / "model_final.pth").resolve()


def test_resolve_device():
    from detectron_res.predictor import resolve_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(tiny_checkpoint):
    from detectron_res.predictor import Predictor

    images = [synthetic_image(90, 130, seed=1), synthetic_image(300, 200, seed=2)]
    cpu = Predictor(tiny_checkpoint, device="cpu", precision="fp32", score_thresh=0.1)(images)
    gpu_predictor = Predictor(tiny_checkpoint, device="auto", precision="fp32", score_thresh=0.1)
    assert gpu_predictor.device.type == "cuda"
    gpu = gpu_predictor(images)
    for a, b in zip(cpu, gpu):
        assert len(a) == len(b) > 0
        np.testing.assert_array_equal(a.labels, b.labels)
        # cuDNN's convolution algorithms differ from the CPU's in float rounding only.
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-3)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.05)
