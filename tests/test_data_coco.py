"""COCO json reader: the fixture in tests/fixtures/data/coco and malformed copies of it."""

import json
import os
import shutil

import numpy as np
import pytest

from detectron_res.data.coco import load_coco_json
from detectron_res.data.dataset import DatasetError

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "data", "coco")


@pytest.fixture
def coco_copy(tmp_path):
    """A writable copy of the fixture; returns (json_path, image_root, data dict)."""
    root = tmp_path / "coco"
    shutil.copytree(FIX, root)
    path = root / "instances.json"
    return str(path), str(root / "images"), json.loads(path.read_text())


def _load_modified(coco_copy, modify, **kwargs):
    path, image_root, data = coco_copy
    modify(data)
    with open(path, "w") as f:
        json.dump(data, f)
    return load_coco_json(path, image_root, name="fx", **kwargs)


def _error(coco_copy, modify, **kwargs) -> DatasetError:
    with pytest.raises(DatasetError) as e:
        _load_modified(coco_copy, modify, **kwargs)
    assert "\n" not in str(e.value)
    return e.value


def test_valid_fixture_boxes_labels_and_label_space():
    ds = load_coco_json(os.path.join(FIX, "instances.json"), os.path.join(FIX, "images"))
    # categories are listed 7, 1, 3 in the file; labels follow sorted ids
    assert ds.class_names == ["cat", "dog", "bird"]
    assert ds.category_ids == [1, 3, 7]
    assert ds.label_to_category_id() == {1: 1, 2: 3, 3: 7}
    assert ds.category_id_to_label() == {1: 1, 3: 2, 7: 3}
    assert ds.label_space() == {"class_names": ["cat", "dog", "bird"], "category_ids": [1, 3, 7]}
    assert ds.format == "coco" and ds.extra["json_file"].endswith("instances.json")
    a, b, c = ds.records
    assert (a.image_id, a.height, a.width) == (1, 48, 64) and a.file_name == os.path.join(FIX, "images", "a.jpg")
    # COCO [x, y, w, h] -> [x, y, x + w, y + h]
    np.testing.assert_array_equal(a.boxes, [[10, 8, 30, 40], [40, 20, 64, 48]])
    np.testing.assert_array_equal(a.labels, [1, 2])
    np.testing.assert_array_equal(a.iscrowd, [False, True])  # kept for evaluation
    np.testing.assert_array_equal(a.training_mask(), [True, False])  # not trained on
    # b's cat is [5, 5, 40, 20] in COCO -> x2 = 45 > W = 40: clipped and counted
    np.testing.assert_array_equal(b.boxes, [[0, 0, 12, 10], [5, 5, 40, 25]])
    np.testing.assert_array_equal(b.labels, [3, 1])
    assert b.boxes.dtype == np.float32 and b.labels.dtype == np.int64
    assert len(c.boxes) == 0 and c.boxes.shape == (0, 4)  # images without annotations are kept
    rep = ds.report
    assert rep.num_images == 3 and rep.num_boxes == 4 and rep.num_crowd == 1 and rep.num_images_without_boxes == 1
    assert rep.boxes_per_class == {"cat": 2, "dog": 1, "bird": 1}
    assert rep.fixed == {"box partly outside the image, clipped to it": 1}
    assert not rep.skipped and not rep.size_mismatches
    text = ds.summary()
    assert "3 images, 4 boxes (1 crowd" in text and "clipped" in text and "annotation id 4" in text


def test_filter_empty_is_a_switch_and_is_counted():
    ds = load_coco_json(os.path.join(FIX, "instances.json"), os.path.join(FIX, "images"), filter_empty=True)
    assert [r.image_id for r in ds.records] == [1, 2]
    assert ds.report.skipped == {"image without training boxes (filter_empty=True)": 1}
    assert ds.report.num_images == 2


def test_class_names_override_selects_and_reorders(coco_copy):
    ds = load_coco_json(coco_copy[0], coco_copy[1], class_names=["bird", "cat"])
    assert ds.category_ids == [7, 1]
    a, b, _ = ds.records
    np.testing.assert_array_equal(a.labels, [2])  # the dog (crowd) is not in class_names
    np.testing.assert_array_equal(b.labels, [1, 2])
    assert ds.report.skipped == {"box of category 'dog' not in class_names, dropped": 1}
    with pytest.raises(DatasetError, match=r"class_names \['horse'\] are not categories of instances.json"):
        load_coco_json(coco_copy[0], coco_copy[1], class_names=["horse"])


def test_nan_box_is_an_error_naming_file_and_annotation(coco_copy):
    def modify(d):
        d["annotations"][0]["bbox"][2] = float("nan")

    err = _error(coco_copy, modify)
    assert "instances.json annotation id 1 (image id 1)" in str(err) and "NaN" in str(err)


def test_negative_size_is_an_error(coco_copy):
    err = _error(coco_copy, lambda d: d["annotations"][1]["bbox"].__setitem__(3, -2))
    assert "annotation id 2" in str(err) and "negative width or height" in str(err)


def test_unknown_category_id_is_an_error(coco_copy):
    err = _error(coco_copy, lambda d: d["annotations"][2].__setitem__("category_id", 99))
    assert "annotation id 3" in str(err) and "category_id 99 is not in 'categories'" in str(err)
    assert "[1, 3, 7]" in str(err)


def test_duplicate_image_ids_are_an_error(coco_copy):
    err = _error(coco_copy, lambda d: d["images"][2].__setitem__("id", 1))
    assert "instances.json: image id 1 appears 2 times" in str(err)


def test_duplicate_annotation_ids_are_an_error(coco_copy):
    err = _error(coco_copy, lambda d: d["annotations"][1].__setitem__("id", 1))
    assert "annotation id 1 appears 2 times" in str(err)


def test_annotation_of_unknown_image_is_an_error(coco_copy):
    err = _error(coco_copy, lambda d: d["annotations"][0].__setitem__("image_id", 42))
    assert "annotation id 1: image_id 42 is not in 'images'" in str(err)


def test_missing_keys_and_invalid_json(coco_copy, tmp_path):
    err = _error(coco_copy, lambda d: d["annotations"][0].pop("bbox"))
    assert "annotations[0]" in str(err) and "'bbox'" in str(err)
    err = _error(coco_copy, lambda d: d.pop("categories"))
    assert "key 'categories' is missing, expected a list" in str(err)
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [\n {"id": 1,,}\n]}')
    with pytest.raises(DatasetError, match=r"bad.json line 2 column \d+: invalid JSON"):
        load_coco_json(str(bad), str(tmp_path))
    with pytest.raises(DatasetError, match=r"annotation file .*nope.json does not exist"):
        load_coco_json(str(tmp_path / "nope.json"), str(tmp_path))


def test_missing_image_file_is_an_error_up_front(coco_copy):
    os.remove(os.path.join(coco_copy[1], "c.jpg"))
    err = _error(coco_copy, lambda d: None)
    assert f"image file {os.path.join(coco_copy[1], 'c.jpg')} does not exist" in str(err)
    assert "referenced by instances.json image id 3" in str(err)
    # even the cheapest check still looks for the file
    err = _error(coco_copy, lambda d: None, check_images="exists")
    assert "c.jpg does not exist" in str(err)


def test_corrupt_image_file_is_an_error_naming_it(coco_copy):
    with open(os.path.join(coco_copy[1], "a.jpg"), "wb") as f:
        f.write(b"garbage")
    err = _error(coco_copy, lambda d: None)
    assert os.path.join(coco_copy[1], "a.jpg") in str(err) and "not a readable image" in str(err)


def test_size_mismatch_is_reported_and_the_file_wins(coco_copy):
    ds = _load_modified(coco_copy, lambda d: d["images"][0].update(height=50, width=70))
    assert ds.records[0].height == 48 and ds.records[0].width == 64
    assert len(ds.report.size_mismatches) == 1
    line = ds.report.size_mismatches[0]
    assert "image id 1" in line and "50x70" in line and "48x64" in line
    assert "annotated size differs" in ds.summary()
    # without the header check the annotation is trusted (nothing to compare with)
    ds = load_coco_json(coco_copy[0], coco_copy[1], check_images="none")
    assert ds.records[0].height == 50


def test_zero_area_and_outside_boxes_are_dropped_and_counted(coco_copy):
    def modify(d):
        d["annotations"].append({"id": 10, "image_id": 3, "category_id": 1, "bbox": [3, 4, 0, 5], "iscrowd": 0})
        d["annotations"].append({"id": 11, "image_id": 3, "category_id": 1, "bbox": [40, 4, 5, 5], "iscrowd": 0})

    ds = _load_modified(coco_copy, modify)
    assert len(ds.records[2].boxes) == 0
    assert ds.report.skipped == {
        "box with zero width or height, dropped": 1,
        "box entirely outside the 32x32 image, dropped": 1,
    }
    assert "annotation id 10" in ds.report.examples["box with zero width or height, dropped"][0]


def test_all_errors_are_collected(coco_copy):
    def modify(d):
        d["annotations"][0]["category_id"] = 50
        d["annotations"][1]["bbox"] = [1, 2, 3]

    err = _error(coco_copy, modify)
    assert len(err.errors) == 2 and "[and 1 more error(s)" in str(err)
    assert "bbox = [1, 2, 3], expected [x, y, width, height]" in err.errors[1]


def test_optional_difficult_key(coco_copy):
    ds = _load_modified(coco_copy, lambda d: d["annotations"][0].update(difficult=1))
    np.testing.assert_array_equal(ds.records[0].difficult, [True, False])
    assert ds.report.num_difficult == 1
