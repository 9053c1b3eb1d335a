"""tools/visualize_data.py and tools/make_shapes.py, on a tiny generated dataset."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from detectron_res.data.catalog import get_dataset
from detectron_res.data.image_io import read_image
from detectron_res.data.transforms import get_resize_shape
from helpers import load_tool as _load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def datasets(tmp_path, monkeypatch):
    root = tmp_path / "datasets"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "make_shapes.py"), "--out", str(root / "shapes"),
         "--num-train", "4", "--num-val", "2", "--min-size", "64", "--max-size", "96"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "wrote shapes dataset" in proc.stdout
    monkeypatch.setenv("DETECTRON_RES_DATASETS", str(root))
    return str(root)


def test_visualize_data_writes_augmented_previews(datasets, tmp_path, capsys):
    cfg = tmp_path / "vis.yaml"
    cfg.write_text(
        "data:\n  train: [shapes_train]\n  test: [shapes_voc_val]\n"
        "input:\n  min_size_train: [128]\n  max_size_train: 400\n  min_size_test: 100\n  max_size_test: 400\n"
    )
    tool = _load_tool("visualize_data")
    out = tmp_path / "vis_test"
    assert tool.main(["--config", str(cfg), "--split", "test", "--num", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dataset 'shapes_voc_val': 2 images" in printed and "wrote 2 images" in printed
    files = sorted(f for f in os.listdir(out) if f.endswith(".png"))
    assert files == ["000_val_00000.png", "001_val_00001.png"] and (out / "summary.txt").is_file()
    ds = get_dataset("shapes_voc_val", root=datasets)
    checked_inside = 0
    for f, r in zip(files, ds.records):
        drawn = cv2.imread(str(out / f))
        h, w = get_resize_shape(r.height, r.width, 100, 400)
        assert drawn.shape == (h, w, 3)  # previews show the loader's size (no enlargement)
        plain = cv2.resize(read_image(r.file_name, format="BGR"), (w, h), interpolation=cv2.INTER_LINEAR)
        diff = np.abs(drawn.astype(int) - plain.astype(int)).sum(axis=2) > 0
        # boxes are drawn on the edges of the (scaled) ground truth, not elsewhere
        for box in r.boxes * np.array([w / r.width, h / r.height] * 2):
            x1, y1, x2, y2 = box.astype(int)
            assert diff[y1:y2, x1].any() and diff[y2 - 1, x1:x2].any()
        if len(r.boxes) == 1:  # (val_00000 with these parameters)
            # the inside of a lone box is left alone: only its edges and label are drawn
            # (the label goes inside, below the top edge, when there is no room above it:
            # the lower half of the box stays untouched)
            checked_inside += 1
            x1, y1, x2, y2 = r.boxes[0] * np.array([w / r.width, h / r.height] * 2)
            assert not diff[int((y1 + y2) / 2) : int(y2) - 3, int(x1) + 3 : int(x2) - 3].any()
    assert checked_inside >= 1
    out_train = tmp_path / "vis_train"
    assert tool.main(["--config", str(cfg), "--num", "3", "--out", str(out_train)]) == 0
    assert len([f for f in os.listdir(out_train) if f.endswith(".png")]) == 3


def test_visualize_data_labels_boxes_with_class_names(datasets, tmp_path, monkeypatch):
    """The previews' label text comes from the dataset's classes (plus the difficult and
    crowd variants), not from the preview file names."""
    import detectron_res.visualize as visualize

    seen = []
    real_draw = visualize.draw_detections

    def recording_draw(image, boxes, labels, *args, class_names=None, **kwargs):
        seen.append((list(class_names), np.asarray(labels).tolist()))
        return real_draw(image, boxes, labels, *args, class_names=class_names, **kwargs)

    monkeypatch.setattr(visualize, "draw_detections", recording_draw)
    cfg = tmp_path / "vis.yaml"
    cfg.write_text("data:\n  train: [shapes_train]\n  test: [shapes_voc_val]\n")
    out = tmp_path / "vis_names"
    assert _load_tool("visualize_data").main(["--config", str(cfg), "--split", "test", "--num", "2",
                                              "--out", str(out)]) == 0
    ds = get_dataset("shapes_voc_val", root=datasets)
    expected = [*ds.class_names, *(f"{n} [difficult]" for n in ds.class_names),
                *(f"{n} [crowd]" for n in ds.class_names)]
    assert len(seen) == 2
    for class_names, labels in seen:
        assert class_names == expected
        assert labels and all(1 <= label <= len(expected) for label in labels)


def test_visualize_data_reports_errors_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DETECTRON_RES_DATASETS", str(tmp_path))
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("data:\n  train: [no_such_dataset]\n")
    tool = _load_tool("visualize_data")
    assert tool.main(["--config", str(cfg), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown dataset name 'no_such_dataset'") and "\n" not in err
