"""Export parity: the ONNX graph (run by onnxruntime) and the TorchScript module give
the detections of the PyTorch model: same count, same labels, scores within 1e-4,
boxes within 1e-3 relative (to the image size), on images of several sizes."""

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from test_predictor import CLASS_NAMES, make_tiny_checkpoint, synthetic_image

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parent.parent
# (H, W): landscape, very wide (the longer side limit decides), a single pixel,
# portrait, square, and a large photo-sized image resized down.
SIZES = [(90, 120), (33, 200), (1, 1), (500, 300), (64, 64), (1200, 900)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _predictor(path, overrides=()):
    from detectron_res.predictor import Predictor

    make_tiny_checkpoint(path, overrides)
    # score_thresh=1.0 keeps the config's test threshold (0.05) in the model.
    return Predictor(path, device="cpu", score_thresh=1.0)


def _reference(model, image):
    with torch.no_grad():
        out = model([torch.from_numpy(image).permute(2, 0, 1).float()])[0]
    return out["boxes"].numpy(), out["scores"].numpy(), out["labels"].numpy()


def _assert_same_detections(got, ref, size, what):
    boxes, scores, labels = got
    ref_boxes, ref_scores, ref_labels = ref
    assert boxes.dtype == np.float32 and scores.dtype == np.float32 and labels.dtype == np.int64
    assert len(boxes) == len(ref_boxes), f"{what}: {len(boxes)} detections, PyTorch {len(ref_boxes)}"
    np.testing.assert_array_equal(labels, ref_labels, err_msg=what)
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-4, err_msg=what)
    np.testing.assert_allclose(boxes, ref_boxes, rtol=1e-3, atol=1e-3 * max(size), err_msg=what)


@pytest.mark.parametrize("pooler", ["ROIPool", "ROIAlignV2"])
def test_onnx_matches_pytorch(tmp_path, pooler):
    from detectron_res.export import OnnxDetector, export_onnx

    predictor = _predictor(tmp_path / "model.pth", [f"model.roi_heads.pooler_type={pooler}"])
    path = export_onnx(predictor.model, tmp_path / "model.onnx", class_names=predictor.class_names)
    detector = OnnxDetector(path)
    assert detector.metadata["class_names"] == CLASS_NAMES and detector.metadata["input_format"] == "BGR"
    inputs = detector.session.get_inputs()
    assert [i.name for i in inputs] == ["image"] and inputs[0].shape[:2] == ["height", "width"]
    total = 0
    for seed, size in enumerate(SIZES):
        image = synthetic_image(*size, seed=seed)
        ref = _reference(predictor.model, image)
        _assert_same_detections(detector(image), ref, size, f"{pooler} {size}")
        total += len(ref[0])
    assert total > 20  # the comparison covered real detections, not just empty outputs


def test_onnx_with_global_context_matches_pytorch(tmp_path):
    """Appendix B's global context is part of the graph: the whole image is one more RoI."""
    from detectron_res.export import OnnxDetector, export_onnx

    predictor = _predictor(tmp_path / "model.pth", ["model.roi_heads.global_context=true"])
    assert predictor.model.roi_heads.predictor.cls_score.in_features == 2 * predictor.model.roi_heads.res5.out_channels
    detector = OnnxDetector(export_onnx(predictor.model, tmp_path / "model.onnx", class_names=predictor.class_names))
    total = 0
    for seed, size in enumerate([(90, 120), (500, 300)]):
        image = synthetic_image(*size, seed=seed)
        ref = _reference(predictor.model, image)
        _assert_same_detections(detector(image), ref, size, f"global context {size}")
        total += len(ref[0])
    assert total > 5


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["model.roi_heads.box_refinement=true"], "model.roi_heads.box_refinement"),
        (["test.scales=[64,96]"], "test.scales"),
        (["test.hflip=true", "test.scales=[96]"], "test.hflip"),
    ],
)
def test_export_refuses_test_time_options(tmp_path, overrides, key):
    from detectron_res.export import export_onnx

    predictor = _predictor(tmp_path / "model.pth", overrides)
    with pytest.raises(ValueError, match=rf"test-time option\(s\) .*{key}.*cannot be traced") as info:
        export_onnx(predictor.model, tmp_path / "model.onnx", class_names=predictor.class_names)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "model.onnx").exists()


def test_torchscript_matches_pytorch(tmp_path):
    from detectron_res.export import export_torchscript

    predictor = _predictor(tmp_path / "model.pth")
    path = export_torchscript(predictor.model, tmp_path / "model.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in recent PyTorch
        module = torch.jit.load(str(path))
    for seed, size in enumerate(SIZES):
        image = synthetic_image(*size, seed=seed)
        with torch.no_grad():
            got = tuple(t.numpy() for t in module(torch.from_numpy(image)))
        _assert_same_detections(got, _reference(predictor.model, image), size, f"torchscript {size}")


def _load_tool():
    spec = importlib.util.spec_from_file_location("export_tool", ROOT / "tools" / "export.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_export_command_line(tmp_path, capsys):
    tool = _load_tool()
    weights = make_tiny_checkpoint(tmp_path / "model_final.pth")
    assert tool.main(["--weights", str(weights), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "model_final.onnx").is_file() and "match PyTorch" in out
    sidecar = json.loads((tmp_path / "model_final.onnx.json").read_text())
    assert sidecar["class_names"] == CLASS_NAMES and sidecar["score_thresh"] == pytest.approx(0.05)
    # Overrides reach the exported graph: a smaller test scale changes the detections.
    assert (
        tool.main(
            [
                "--weights",
                str(weights),
                "--output",
                str(tmp_path / "small.onnx"),
                "input.min_size_test=32",
                "input.max_size_test=48",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "small.onnx.json").read_text())["min_size_test"] == 32
    assert tool.main(["--weights", str(weights), "--format", "tflite"]) == 2
    assert "tflite" in capsys.readouterr().err
    assert tool.main(["--weights", str(weights), "--opset", "11", "--no-check"]) == 2
    assert "opset 11" in capsys.readouterr().err
    assert tool.main(["--weights", str(tmp_path / "nope.pth")]) == 2
