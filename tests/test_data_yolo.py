"""YOLO txt reader: the fixture in tests/fixtures/data/yolo and malformed copies of it."""

import os
import shutil

import numpy as np
import pytest

from detectron_res.data.dataset import DatasetError
from detectron_res.data.yolo import load_yolo, read_class_names_file

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "data", "yolo")


@pytest.fixture
def yolo_copy(tmp_path):
    root = tmp_path / "yolo"
    shutil.copytree(FIX, root)
    return str(root)


def _append(root, stem, line):
    with open(os.path.join(root, "labels", stem + ".txt"), "a") as f:
        f.write(line + "\n")


def _error(root, **kwargs) -> DatasetError:
    with pytest.raises(DatasetError) as e:
        load_yolo(root, **kwargs)
    assert "\n" not in str(e.value)
    return e.value


def test_valid_fixture_denormalizes_centres():
    ds = load_yolo(FIX)
    assert ds.class_names == ["cat", "dog", "bird"] and ds.category_ids == [1, 2, 3] and ds.format == "yolo"
    a, b, c = ds.records
    assert [r.image_id for r in ds.records] == ["a", "b", "c"]
    # "0 0.312500 0.500000 0.312500 0.666667" on 64 x 48 -> (10, 8, 30, 40), up to the 6 decimals
    np.testing.assert_allclose(a.boxes, [[10, 8, 30, 40]], atol=1e-4)
    np.testing.assert_array_equal(a.labels, [1])
    np.testing.assert_allclose(b.boxes, [[0, 0, 12, 10], [5, 5, 40, 25]], atol=1e-4)
    np.testing.assert_array_equal(b.labels, [3, 1])
    assert (b.height, b.width) == (30, 40)  # read from the header (YOLO has no sizes)
    assert len(c.boxes) == 0
    assert ds.report.fixed == {"box partly outside the image, clipped to it": 1}
    assert any("1 image(s) have no label file" in n and "c" in n for n in ds.report.notes)


def test_class_index_out_of_range(yolo_copy):
    _append(yolo_copy, "a", "3 0.5 0.5 0.1 0.1")
    err = _error(yolo_copy)
    assert "labels/a.txt line 2: class index 3 is unknown, expected an integer in 0..2" in str(err)


def test_wrong_number_of_values_and_non_numeric(yolo_copy):
    _append(yolo_copy, "a", "0 0.5 0.5 0.1")
    _append(yolo_copy, "b", "cat 0.5 0.5 0.1 0.1")
    err = _error(yolo_copy)
    assert len(err.errors) == 2
    assert "labels/a.txt line 2: '0 0.5 0.5 0.1' has 4 values, expected 5" in err.errors[0]
    assert "labels/b.txt line 3" in err.errors[1] and "not numeric" in err.errors[1]


def test_nan_and_negative_sizes(yolo_copy):
    _append(yolo_copy, "a", "0 0.5 nan 0.1 0.1")
    _append(yolo_copy, "b", "1 0.5 0.5 -0.1 0.1")
    err = _error(yolo_copy)
    assert "labels/a.txt line 2" in err.errors[0] and "NaN" in err.errors[0]
    assert "labels/b.txt line 3" in err.errors[1] and "negative width or height" in err.errors[1]


def test_missing_class_names(yolo_copy):
    os.remove(os.path.join(yolo_copy, "classes.txt"))
    err = _error(yolo_copy)
    assert "no class names" in str(err) and "classes.txt" in str(err)
    # explicit names or a data.yaml work instead
    assert load_yolo(yolo_copy, class_names=["cat", "dog", "bird"]).num_classes == 3
    with open(os.path.join(yolo_copy, "data.yaml"), "w") as f:
        f.write("names:\n  0: cat\n  1: dog\n  2: bird\n")
    assert load_yolo(yolo_copy).class_names == ["cat", "dog", "bird"]


def test_class_names_file_problems(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("a\nb\na\n")
    with pytest.raises(DatasetError, match=r"class names \['a'\] appear more than once"):
        read_class_names_file(str(p))
    p.write_text("\n\n")
    with pytest.raises(DatasetError, match="no class names"):
        read_class_names_file(str(p))


def test_class_names_file_error_names_the_dataset(yolo_copy):
    with open(os.path.join(yolo_copy, "classes.txt"), "w") as f:
        f.write("cat\ndog\ncat\n")
    err = _error(yolo_copy)
    assert str(err).startswith("dataset 'yolo_"), str(err)
    assert "classes.txt: class names ['cat'] appear more than once" in str(err)


def test_label_file_without_image_is_reported(yolo_copy):
    with open(os.path.join(yolo_copy, "labels", "orphan.txt"), "w") as f:
        f.write("0 0.5 0.5 0.2 0.2\n")
    ds = load_yolo(yolo_copy)
    assert ds.report.skipped == {"label file without a matching image, ignored": 1}
    assert ds.report.examples["label file without a matching image, ignored"] == [os.path.join("labels", "orphan.txt")]


def test_corrupt_image_is_an_error(yolo_copy):
    with open(os.path.join(yolo_copy, "images", "a.jpg"), "wb") as f:
        f.write(b"\xff\xd8 not really")
    err = _error(yolo_copy)
    assert os.path.join(yolo_copy, "images", "a.jpg") in str(err)


def test_split_subfolders(tmp_path):
    root = tmp_path / "ultra"
    for sub in ("images", "labels"):
        shutil.copytree(os.path.join(FIX, sub), root / sub / "train")
    (root / "labels" / "train" / "classes.txt").write_text("cat\ndog\nbird\n")  # LabelImg's place
    ds = load_yolo(str(root), split="train")
    assert len(ds) == 3 and ds.name == "yolo_ultra_train"
    np.testing.assert_allclose(ds.records[0].boxes, [[10, 8, 30, 40]], atol=1e-4)
    assert not ds.report.skipped  # classes.txt is not mistaken for a label file
    # without split, all sub-folders are one dataset, and the report says so
    whole = load_yolo(str(root), class_names=["cat", "dog", "bird"])
    assert len(whole) == 3 and any("set 'split'" in n for n in whole.report.notes)


def test_box_touching_the_border_is_not_reported_as_clipped(yolo_copy):
    # 6-decimal rounding may overshoot the border by ~1e-5 px: not a data problem
    _append(yolo_copy, "a", "1 0.833334 0.708334 0.333334 0.583334")
    ds = load_yolo(yolo_copy)
    np.testing.assert_allclose(ds.records[0].boxes[1], [42.6666, 20.0, 64.0, 48.0], atol=1e-3)
    assert ds.report.fixed == {"box partly outside the image, clipped to it": 1}  # only b's cat
