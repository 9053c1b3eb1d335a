"""A newcomer's frictions (issue 17): what the tools show and say.

* tools/infer.py searches sub-folders with --recursive and counts what it skipped;
* labels of annotated images: never cut by a box edge, never over another label when
  there is room, at least ~10 pixels tall, thumbnails drawn enlarged;
* PR-curve titles name the evaluator and the IoU;
* comp4 files of a validation set say ``val``;
* 16-bit images that use 12 bits are scaled by those bits;
* every tool's --help shows examples.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from detectron_res.visualize import MIN_DRAWN_SIDE, draw_detections
from helpers import make_tiny_checkpoint, synthetic_image
from helpers import load_tool

ROOT = Path(__file__).resolve().parent.parent


def _load_tool(name):
    return load_tool(name, f"newcomer_{name}")


# ----------------------------------------------------------------------------- infer --recursive
def test_infer_recursive_and_skipped_subfolders_reported(tmp_path, capsys):
    photos = tmp_path / "photos"
    (photos / "2024" / "june").mkdir(parents=True)
    (photos / "empty").mkdir()
    cv2.imwrite(str(photos / "top.png"), synthetic_image(64, 80, seed=1))
    cv2.imwrite(str(photos / "2024" / "a.jpg"), synthetic_image(64, 80, seed=2))
    cv2.imwrite(str(photos / "2024" / "june" / "b.png"), synthetic_image(64, 80, seed=3))
    (photos / "2024" / "notes.txt").write_text("not an image")
    ckpt = make_tiny_checkpoint(tmp_path / "model_final.pth")
    infer = _load_tool("infer")

    code = infer.main([str(photos), "--weights", str(ckpt), "--output", str(tmp_path / "flat"), "--device", "cpu",
                       "-q"])
    out = capsys.readouterr().out
    assert code == 0
    assert "skipped 2 sub-folder(s) of the given folders (pass --recursive to search them)" in out
    assert len(json.loads((tmp_path / "flat" / "predictions.json").read_text())["images"]) == 1

    code = infer.main([str(photos), "--recursive", "--weights", str(ckpt), "--output", str(tmp_path / "deep"),
                       "--device", "cpu", "-q"])
    out = capsys.readouterr().out
    assert code == 0
    assert "ignored 1 file(s) in the given folders without an image or video extension" in out
    assert "sub-folder" not in out
    names = sorted(Path(r["file_name"]).name for r in
                   json.loads((tmp_path / "deep" / "predictions.json").read_text())["images"])
    assert names == ["a.jpg", "b.png", "top.png"]


def test_folder_with_only_subfolders_says_recursive(tmp_path):
    from detectron_res import inference_io as infer  # tools/infer.py's input discovery

    (tmp_path / "outer" / "inner").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "outer" / "inner" / "x.png"), synthetic_image(16, 16))
    inputs, failures, _, skipped = infer.discover_inputs([str(tmp_path / "outer")])
    assert not inputs and skipped == 1
    assert "pass --recursive" in failures[0].reason
    inputs, failures, _, skipped = infer.discover_inputs([str(tmp_path / "outer")], recursive=True)
    assert [i.path.name for i in inputs] == ["x.png"] and not failures and skipped == 0


# ----------------------------------------------------------------------------- labels
def _drawn(monkeypatch, *args, **kwargs):
    """Run draw_detections recording its rectangles in call order:
    ``[("box" | "label", (x1, y1, x2, y2)), ...]`` (labels are the filled ones)."""
    import detectron_res.visualize as visualize

    calls = []
    real = cv2.rectangle

    def rectangle(img, p1, p2, color, thickness, *rest, **kw):
        calls.append(("label" if thickness == cv2.FILLED else "box", (p1[0], p1[1], p2[0], p2[1])))
        return real(img, p1, p2, color, thickness, *rest, **kw)

    monkeypatch.setattr(visualize.cv2, "rectangle", rectangle)
    canvas = draw_detections(*args, **kwargs)
    monkeypatch.setattr(visualize.cv2, "rectangle", real)
    return canvas, calls


def _overlap(a, b):
    return min(a[2], b[2]) - max(a[0], b[0]) >= 0 and min(a[3], b[3]) - max(a[1], b[1]) >= 0


def test_crowded_labels_do_not_overlap_and_are_not_cut_by_boxes(monkeypatch):
    image = np.full((400, 600, 3), 40, np.uint8)
    rng = np.random.default_rng(0)
    boxes = []
    for _ in range(12):
        x, y = rng.uniform(0, 480), rng.uniform(0, 300)
        boxes.append([x, y, x + rng.uniform(60, 120), y + rng.uniform(50, 100)])
    canvas, calls = _drawn(monkeypatch, image, np.array(boxes), np.arange(1, 13), np.linspace(0.99, 0.5, 12),
                           [f"c{i}" for i in range(1, 13)])
    kinds = [k for k, _ in calls]
    # Every box (outline and colour) before every label: no box edge is drawn over a label.
    assert kinds == ["box"] * 24 + ["label"] * 12
    labels = [r for k, r in calls if k == "label"]
    for i, a in enumerate(labels):
        assert 0 <= a[0] and 0 <= a[1] and a[2] < 600 and a[3] < 400, a  # inside the image
        assert a[3] - a[1] + 1 >= 14, a  # ~10-pixel text plus padding
        for b in labels[i + 1:]:
            assert not _overlap(a, b), (a, b)


def test_label_at_the_top_goes_inside_the_box(monkeypatch):
    image = np.zeros((300, 300, 3), np.uint8)
    _, calls = _drawn(monkeypatch, image, np.array([[50.0, 0.0, 250.0, 200.0]]), np.array([1]), np.array([0.9]),
                      ["person"])
    (x1, y1, x2, y2), = [r for k, r in calls if k == "label"]
    assert x1 == 50 and 1 <= y1 and y2 < 200  # below the top edge, inside the box
    # Two boxes side by side at the same height: the second label goes elsewhere.
    _, calls = _drawn(monkeypatch, image, np.array([[50.0, 100.0, 250.0, 200.0], [52.0, 102.0, 240.0, 190.0]]),
                      np.array([1, 2]), np.array([0.9, 0.8]), ["person", "dog"])
    a, b = [r for k, r in calls if k == "label"]
    assert not _overlap(a, b)


def test_thumbnails_are_enlarged_by_an_integer_factor():
    image = synthetic_image(48, 64)
    out = draw_detections(image, np.array([[0.0, 0.0, 30.0, 30.0]]), np.array([2]), np.array([0.9]), ["a", "b"],
                          min_side=MIN_DRAWN_SIDE)
    assert out.shape == (48 * 6, 64 * 6, 3)
    assert draw_detections(image, np.zeros((0, 4)), np.zeros(0), np.zeros(0)).shape == (48, 64, 3)


# ----------------------------------------------------------------------------- PR curves, comp4
def _titles(monkeypatch):
    from matplotlib.figure import Figure

    titles = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        titles.append(self.axes[0].get_title())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return titles


def test_pr_curve_titles_name_evaluator_and_iou(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from detectron_res.evaluation.coco import COCOEvaluator
    from detectron_res.evaluation.report import plot_pr_curves
    from detectron_res.evaluation.voc import VOCEvaluator

    dataset = SimpleNamespace(name="shapes_val", class_names=["circle"], num_classes=1, format="coco",
                              extra={"year": "2007"}, category_ids=[1], records=[])
    voc07 = VOCEvaluator(dataset)
    voc12 = VOCEvaluator(dataset, use_07_metric=False)
    coco = COCOEvaluator(dataset)
    titles = _titles(monkeypatch)
    curve = {"circle": {"precision": [1.0, 0.5], "recall": [0.5, 1.0], "ap": 75.0}}
    for e in (voc07, voc12, coco):
        plot_pr_curves(curve, tmp_path / e.name, ap_name=e.pr_curve_ap_name)
    assert titles == ["circle: VOC07 11-point AP at IoU 0.5 = 75.0", "circle: VOC area AP at IoU 0.5 = 75.0",
                      "circle: COCO AP at IoU 0.5 = 75.0"]


def test_comp4_files_of_a_val_split_say_val(tmp_path):
    from types import SimpleNamespace

    from detectron_res.evaluation.voc import VOCEvaluator, split_from_dataset_name

    assert split_from_dataset_name("shapes_val") == "val"
    assert split_from_dataset_name("voc_2007_test") == "test"
    assert split_from_dataset_name("my_photos") == "my_photos"
    dataset = SimpleNamespace(name="shapes_val", class_names=["circle"], num_classes=1, format="coco",
                              extra={"year": "2007"}, records=[])
    evaluator = VOCEvaluator(dataset, output_dir=tmp_path)
    assert evaluator.split == "val"
    # A VOC dataset keeps its own split whatever its name.
    voc = SimpleNamespace(name="mine", class_names=["a"], num_classes=1, format="voc",
                          extra={"year": "2007", "split": "trainval"}, records=[])
    assert VOCEvaluator(voc).split == "trainval"


# ----------------------------------------------------------------------------- 16-bit images
def test_12_bit_data_in_16_bit_png_is_scaled_by_its_bits(tmp_path):
    from detectron_res.data.image_io import read_image

    values = (np.arange(40 * 50).reshape(40, 50) * 4095 // (40 * 50 - 1)).astype(np.uint16)  # 0..4095
    Image.fromarray(values).save(tmp_path / "x12.png")
    img = read_image(tmp_path / "x12.png", format="RGB")
    np.testing.assert_array_equal(img[:, :, 0], (values >> 4).astype(np.uint8))
    assert img.max() == 255 and img.mean() > 100  # not "nearly black" (>> 8 would give a max of 15)
    eight = (values // 17).astype(np.uint16)  # 0..240: 8-bit data stored in 16 bits stays as is
    Image.fromarray(eight).save(tmp_path / "x8.png")
    np.testing.assert_array_equal(read_image(tmp_path / "x8.png", format="RGB")[:, :, 0], eight.astype(np.uint8))


# ----------------------------------------------------------------------------- --help examples
TOOLS = sorted(p.stem for p in (ROOT / "tools").glob("*.py"))


@pytest.mark.parametrize("name", TOOLS)
def test_every_tool_help_has_examples(name):
    module = _load_tool(name)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    examples = [line for line in stdout.getvalue().splitlines() if f"python tools/{name}.py" in line]
    assert examples, f"tools/{name}.py --help shows no example:\n{stdout.getvalue()}"


# ----------------------------------------------------------------------------- checkpoint names
def test_checkpoints_and_evaluations_are_named_by_iterations_done(tmp_path, caplog):
    """period 3, evaluation every 4, 10 iterations: files after 3, 6, 9 iterations and the
    log's evaluations "at iteration 4, 8" (as ``iter: 4/10`` counts), keep_last 2."""
    import logging

    from test_engine_trainer import make_trainer

    with caplog.at_level(logging.INFO, logger="detectron_res"):
        make_trainer(tmp_path, eval_fn=lambda: {"toy": {"score": 1.0}}).train()
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == [
        "model_0000006.pth", "model_0000009.pth", "model_final.pth"]
    evaluations = [r.getMessage().split(":")[0] for r in caplog.records if r.getMessage().startswith("Evaluation")]
    assert evaluations == ["Evaluation at iteration 4", "Evaluation at iteration 8", "Evaluation at iteration 10"]
    logged = [r.getMessage() for r in caplog.records if "iter: 4/10" in r.getMessage()]
    assert logged, "the iteration line the evaluation and file names agree with"


def test_resume_from_a_checkpoint_named_the_old_way(tmp_path):
    """Runs written before this naming (model_0000005.pth after 6 iterations) resume exactly."""
    from test_engine_trainer import Crash, assert_same, make_trainer, weights

    from detectron_res.engine.checkpoint import LAST_CHECKPOINT_FILE, find_last_checkpoint

    ref = make_trainer(tmp_path / "ref")
    ref.train()
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        make_trainer(run, extra_hooks=[Crash(at=7)]).train()
    (run / "model_0000006.pth").rename(run / "model_0000005.pth")  # the old name: the 0-based index
    (run / LAST_CHECKPOINT_FILE).write_text("model_0000005.pth")
    resumed = make_trainer(run, resume=True)
    assert resumed.start_iter == 6
    resumed.train()
    assert_same(weights(resumed), weights(ref))
    assert find_last_checkpoint(run).name == "model_final.pth"
    assert sorted(p.name for p in run.glob("model_0*.pth")) == ["model_0000005.pth", "model_0000009.pth"]
