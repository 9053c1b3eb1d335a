"""Export parity: the ONNX graph (run by onnxruntime) and the TorchScript module give
the detections of the PyTorch model: same count, same labels, scores within 1e-4,
boxes within 1e-3 relative (to the image size), on images of several sizes."""

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from helpers import CLASS_NAMES, load_tool, make_tiny_checkpoint, synthetic_image

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parent.parent
# (H, W): landscape, very wide (the longer side limit decides), a single pixel,
# portrait, square, and a large photo-sized image resized down.
SIZES = [(90, 120), (33, 200), (1, 1), (500, 300), (64, 64), (1200, 900)]


def _predictor(path, overrides=()):
    from detectron_res.predictor import Predictor

    make_tiny_checkpoint(path, overrides)
    # score_thresh=1.0 keeps the config's test threshold (0.05) in the model; the
    # exported graph is float32 (auto would store bf16 weights on a CPU with bf16).
    return Predictor(path, device="cpu", score_thresh=1.0, precision="fp32")


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


def test_export_command_line(tmp_path, capsys):
    tool = load_tool("export")
    weights = make_tiny_checkpoint(tmp_path / "model_final.pth")
    images = tmp_path / "images"
    images.mkdir()
    for seed, (h, w) in enumerate(SIZES[:3]):
        cv2.imwrite(str(images / f"im{seed}.png"), synthetic_image(h, w, seed=seed))
    assert tool.main(["--weights", str(weights), "--format", "onnx", "--check-images", str(images)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "model_final.onnx").is_file() and "check: verified (onnx)" in out
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
                "--no-check",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "small.onnx.json").read_text())["min_size_test"] == 32
    assert tool.main(["--weights", str(weights), "--format", "tflite"]) == 2
    assert "tflite" in capsys.readouterr().err
    assert tool.main(["--weights", str(weights), "--opset", "11", "--no-check"]) == 2
    assert "opset 11" in capsys.readouterr().err
    # The range is checked before anything is loaded (a missing checkpoint is not even looked at).
    assert tool.main(["--weights", str(tmp_path / "nope.pth"), "--opset", "99"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --opset 99 is out of range; expected 16 to 20 (ROIAlign aligned=True needs opset 16; the exporter "
        "stops at 20)")
    assert tool.main(["--weights", str(tmp_path / "nope.pth")]) == 2


def test_export_tool_checks_options_with_the_library_limits():
    """tools/export.py repeats the formats and opset range to check them before importing
    torch: they must be the library's."""
    from detectron_res import export

    tool = load_tool("export")
    assert (tool.FORMATS, tool.MIN_OPSET, tool.MAX_OPSET) == (export.EXPORT_FORMATS, export.MIN_OPSET,
                                                              export.MAX_OPSET)


# ----------------------------------------------------------------------------
# The parity check of tools/export.py on a trained model (issue 20)
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """configs/tiny_shapes.yaml trained for 30 iterations on a small generated shapes
    dataset, with data.test = shapes_val: the demo's recipe at a size a test can afford."""
    from detectron_res.data.shapes import generate_shapes_dataset

    root = tmp_path_factory.mktemp("export_data")
    generate_shapes_dataset(str(root / "shapes"), num_train=8, num_val=6, image_size=(64, 96), seed=5)
    train_net = load_tool("train_net")
    out = tmp_path_factory.mktemp("export_run")
    mp = pytest.MonkeyPatch()
    mp.setenv("DETECTRON_RES_DATASETS", str(root))
    try:
        assert train_net.main(["--config", "tiny_shapes.yaml", "--output-dir", str(out), "--device", "cpu",
                               "data.train=[shapes_train]", "data.test=[shapes_val]", "test.eval_period=0",
                               "test.best_metric=", "test.evaluators=[voc]", "solver.max_iter=30",
                               "solver.ims_per_batch=2", "solver.checkpoint_period=1000"]) == 0
    finally:
        mp.undo()
    return out, root


def _check_report(stdout: str) -> dict:
    """The numbers of the tool's report line."""
    import re

    line = next(line for line in stdout.splitlines() if line.startswith("check ("))
    numbers = {
        "images": r"(\d+) image\(s\), (\d+) with detections",
        "compared": r"(\d+) detection\(s\) compared",
        "box": r"max box difference ([\d.e+-]+|inf|nan) px",
        "score": r"max score difference ([\d.e+-]+|inf|nan);",
        "labels": r"labels agree (\d+)/(\d+)",
        "tolerance": r"tolerance: boxes ([\d.e+-]+) px, scores ([\d.e+-]+)",
    }
    return {k: re.search(v, line).groups() for k, v in numbers.items()}


def _perturb_onnx(path, out):
    """Change ONE number of the exported graph: the first weight of the box classifier."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    target = next(t for t in model.graph.initializer if "cls_score.weight" in t.name)
    values = numpy_helper.to_array(target).copy()
    values.flat[0] += 50.0
    target.CopyFrom(numpy_helper.from_array(values, target.name))
    onnx.save(model, str(out))
    return target.name


def _perturb_torchscript(path, out):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path))
    name, param = next((n, p) for n, p in module.named_parameters() if "cls_score.weight" in n)
    with torch.no_grad():
        param.view(-1)[0] += 50.0
    module.save(str(out))
    return name


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_check_compares_real_detections_and_catches_a_changed_weight(trained_run, fmt, tmp_path, monkeypatch,
                                                                            capsys):
    run, data_root = trained_run
    monkeypatch.setenv("DETECTRON_RES_DATASETS", str(data_root))
    tool = load_tool("export")
    exported = tmp_path / ("model.onnx" if fmt == "onnx" else "model.pt")
    code = tool.main(["--weights", str(run / "model_final.pth"), "--format", fmt, "--output", str(exported)])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    # The images come from the config's data.test (shapes_val), and detections were compared.
    assert "on images from data.test ['shapes_val']" in out
    report = _check_report(out)
    compared = int(report["compared"][0])
    assert compared > 0 and int(report["images"][1]) > 0
    assert report["labels"] == (str(compared), str(compared))
    assert float(report["box"][0]) <= 0.05 and float(report["score"][0]) <= 1e-3
    assert report["tolerance"] == ("0.05", "0.001")
    assert f"check: verified ({fmt})" in out

    # One weight of the exported file changed: --verify finds it, exit 1.
    perturbed = tmp_path / ("perturbed.onnx" if fmt == "onnx" else "perturbed.pt")
    (_perturb_onnx if fmt == "onnx" else _perturb_torchscript)(exported, perturbed)
    code = tool.main(["--weights", str(run / "model_final.pth"), "--verify", str(perturbed)])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    assert f"check FAILED ({fmt}): the exported model disagrees with PyTorch" in err
    # ... and the unmodified file verifies with --verify (nothing is written by it).
    before = sorted(tmp_path.iterdir())
    assert tool.main(["--weights", str(run / "model_final.pth"), "--verify", str(exported)]) == 0
    capsys.readouterr()
    assert sorted(tmp_path.iterdir()) == before


def test_export_check_without_detections_is_not_verified(trained_run, tmp_path, monkeypatch, capsys):
    """Images on which the model detects nothing: "not verified", exit 3 (0 with --no-check)."""
    run, data_root = trained_run
    monkeypatch.setenv("DETECTRON_RES_DATASETS", str(data_root))
    blank = tmp_path / "blank"
    blank.mkdir()
    cv2.imwrite(str(blank / "black.png"), np.zeros((64, 96, 3), np.uint8))
    tool = load_tool("export")
    # The score threshold at 0.999: nothing passes it on a black image.
    args = ["model.roi_heads.score_thresh_test=0.999", "--weights", str(run / "model_final.pth"), "--format",
            "torchscript", "--check-images", str(blank)]
    code = tool.main(args + ["--output", str(tmp_path / "a.pt")])
    out, err = capsys.readouterr()
    assert code == 3, out + err
    assert "0 detection(s) compared" in out and "1 image(s), 0 with detections" in out
    assert err.startswith("check: NOT VERIFIED (torchscript): PyTorch detects nothing above the score threshold 0.999")
    # No readable dataset and no --check-images: not verified, and the message says why.
    monkeypatch.setenv("DETECTRON_RES_DATASETS", str(tmp_path / "nowhere"))
    code = tool.main(["--weights", str(run / "model_final.pth"), "--format", "torchscript", "--output",
                      str(tmp_path / "b.pt")])
    out, err = capsys.readouterr()
    assert code == 3 and "NOT VERIFIED" in err and "cannot be read" in err
    assert tool.main(args + ["--output", str(tmp_path / "c.pt"), "--no-check"]) == 0
    assert "check skipped (--no-check)" in capsys.readouterr().out


def test_export_refuses_to_overwrite(tmp_path, capsys):
    """--output equal to --weights (or a link to it) is refused, the checkpoint intact;
    an existing export is replaced only with --overwrite."""
    tool = load_tool("export")
    weights = make_tiny_checkpoint(tmp_path / "model_final.pth")
    original = weights.read_bytes()
    (tmp_path / "link.onnx").symlink_to(weights)
    for output in (weights, tmp_path / "link.onnx"):
        for extra in ([], ["--overwrite"]):
            code = tool.main(["--weights", str(weights), "--output", str(output), "--no-check", *extra])
            err = capsys.readouterr().err
            assert code == 2 and err.startswith(f"error: --output {output} is also an input"), err
            assert len(err.strip().splitlines()) == 1
    assert weights.read_bytes() == original
    assert tool.main(["--weights", str(weights), "--no-check", "--format", "torchscript"]) == 0
    first = (tmp_path / "model_final.torchscript.pt").read_bytes()
    capsys.readouterr()
    assert tool.main(["--weights", str(weights), "--no-check", "--format", "torchscript"]) == 2
    assert "model_final.torchscript.pt already exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "model_final.torchscript.pt").read_bytes() == first
    assert tool.main(["--weights", str(weights), "--no-check", "--format", "torchscript", "--overwrite"]) == 0
    # An existing folder where the file should go: one line.
    (tmp_path / "dir.onnx").mkdir()
    assert tool.main(["--weights", str(weights), "--output", str(tmp_path / "dir.onnx"), "--no-check"]) == 2
    assert capsys.readouterr().err.strip().endswith("is a folder, expected a file name to write")
