"""PASCAL VOC reader: the fixture in tests/fixtures/data/voc and malformed copies of it."""

import os
import shutil

import numpy as np
import pytest

from detectron_res.data.dataset import DatasetError
from detectron_res.data.voc import VOC_CLASS_NAMES, load_voc, resolve_voc_root

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "data", "voc")
CLASSES = ["cat", "dog", "bird"]


@pytest.fixture
def voc_copy(tmp_path):
    root = tmp_path / "VOCdevkit"
    shutil.copytree(FIX, root)
    return str(root / "VOC2007")


def _edit(voc_root, stem, old, new):
    path = os.path.join(voc_root, "Annotations", stem + ".xml")
    text = open(path).read()
    assert old in text
    with open(path, "w") as f:
        f.write(text.replace(old, new))


def _error(voc_root, **kwargs) -> DatasetError:
    kwargs.setdefault("class_names", CLASSES)
    with pytest.raises(DatasetError) as e:
        load_voc(voc_root, "train", **kwargs)
    assert "\n" not in str(e.value)
    return e.value


def test_valid_fixture_converts_1_based_inclusive_coordinates():
    ds = load_voc(os.path.join(FIX, "VOC2007"), "train", class_names=CLASSES)
    assert ds.name == "voc_2007_train" and ds.extra["year"] == "2007" and ds.extra["split"] == "train"
    assert ds.class_names == CLASSES and ds.category_ids == [1, 2, 3] and ds.format == "voc"
    a, b, c = ds.records
    assert a.image_id == "a" and (a.height, a.width) == (48, 64)
    # XML xmin=11 ymin=9 xmax=30 ymax=40 (1-based inclusive) -> (10, 8, 30, 40)
    np.testing.assert_array_equal(a.boxes, [[10, 8, 30, 40]])
    np.testing.assert_array_equal(a.labels, [1])
    # b's XML has xmin=1 ymin=1 (the first pixel) -> x1 = y1 = 0; its cat has xmax=45 > W=40
    np.testing.assert_array_equal(b.boxes, [[0, 0, 12, 10], [5, 5, 40, 25]])
    np.testing.assert_array_equal(b.labels, [3, 1])
    np.testing.assert_array_equal(b.difficult, [True, False])  # kept, flagged
    np.testing.assert_array_equal(b.training_mask(), [False, True])  # not trained on by default
    np.testing.assert_array_equal(b.training_mask(use_difficult=True), [True, True])
    # JPEGImages/b.jpg does not exist: the XML's <filename> b.png is used
    assert b.file_name.endswith(os.path.join("JPEGImages", "b.png"))
    assert len(c.boxes) == 0
    assert ds.report.num_difficult == 1 and ds.report.fixed == {"box partly outside the image, clipped to it": 1}
    assert "b.xml object #1 ('cat')" in ds.report.examples["box partly outside the image, clipped to it"][0]


def test_default_label_space_is_the_20_voc_classes():
    assert len(VOC_CLASS_NAMES) == 20 and VOC_CLASS_NAMES[0] == "aeroplane" and VOC_CLASS_NAMES[-1] == "tvmonitor"
    ds = load_voc(os.path.join(FIX, "VOC2007"), "train")
    assert ds.class_names == list(VOC_CLASS_NAMES)
    np.testing.assert_array_equal(ds.records[1].labels, [VOC_CLASS_NAMES.index("bird") + 1, VOC_CLASS_NAMES.index("cat") + 1])


def test_resolve_voc_root_accepts_devkit_plus_year(voc_copy):
    devkit = os.path.dirname(voc_copy)
    assert resolve_voc_root(devkit, "2007") == voc_copy
    ds = load_voc(devkit, "train", year="2007", class_names=CLASSES)
    assert len(ds) == 3 and ds.extra["voc_root"] == voc_copy


def test_unknown_class_name_is_an_error(voc_copy):
    _edit(voc_copy, "a", "<name>cat</name>", "<name>unicorn</name>")
    err = _error(voc_copy)
    assert "a.xml object #0: class name 'unicorn' is not in class_names" in str(err)


def test_nan_and_negative_boxes_are_errors(voc_copy):
    _edit(voc_copy, "a", "<xmax>30</xmax>", "<xmax>nan</xmax>")
    err = _error(voc_copy)
    assert "a.xml object #0 ('cat')" in str(err) and "NaN" in str(err)
    _edit(voc_copy, "a", "<xmax>nan</xmax>", "<xmax>5</xmax>")  # xmin = 11
    err = _error(voc_copy)
    assert "a.xml object #0 ('cat')" in str(err) and "negative width or height" in str(err)


def test_zero_width_box_is_dropped_and_counted(voc_copy):
    # inclusive xmin=11, xmax=10 -> width xmax - xmin + 1 = 0
    _edit(voc_copy, "a", "<xmax>30</xmax>", "<xmax>10</xmax>")
    ds = load_voc(voc_copy, "train", class_names=CLASSES)
    assert len(ds.records[0].boxes) == 0
    assert ds.report.skipped == {"box with zero width or height, dropped": 1}


def test_invalid_xml_names_file_and_line(voc_copy):
    _edit(voc_copy, "b", "</annotation>", "</annotatio>")
    err = _error(voc_copy)
    assert "b.xml line" in str(err) and "invalid XML" in str(err)


def test_missing_files_are_errors(voc_copy):
    os.remove(os.path.join(voc_copy, "Annotations", "c.xml"))
    err = _error(voc_copy)
    assert "c.xml does not exist" in str(err) and "image id 'c' in train.txt" in str(err)
    with pytest.raises(DatasetError, match=r"split file .*trainval.txt does not exist; available splits: \['train'\]"):
        load_voc(voc_copy, "trainval", class_names=CLASSES)


def test_missing_image_is_an_error(voc_copy):
    os.remove(os.path.join(voc_copy, "JPEGImages", "a.jpg"))
    err = _error(voc_copy)
    assert os.path.join("JPEGImages", "a.jpg") in str(err) and "does not exist (referenced by a.xml)" in str(err)


def test_duplicate_ids_in_split_file(voc_copy):
    with open(os.path.join(voc_copy, "ImageSets", "Main", "train.txt"), "a") as f:
        f.write("a\n")
    err = _error(voc_copy)
    assert "image id 'a' appears 2 times" in str(err)


def test_size_mismatch_is_reported(voc_copy):
    _edit(voc_copy, "a", "<width>64</width>", "<width>65</width>")
    ds = load_voc(voc_copy, "train", class_names=CLASSES)
    assert ds.records[0].width == 64
    assert ds.report.size_mismatches == ["a.xml: annotation says 48x65 (HxW), file a.jpg is 48x64"]


def test_bad_difficult_flag(voc_copy):
    _edit(voc_copy, "b", "<difficult>1</difficult>", "<difficult>yes</difficult>")
    err = _error(voc_copy)
    assert "b.xml object #0 ('bird'): <difficult> is 'yes', expected 0 or 1" in str(err)


def test_images_only_split(voc_copy):
    # VOC2012 test: image list only, no public labels
    with open(os.path.join(voc_copy, "ImageSets", "Main", "test.txt"), "w") as f:
        f.write("a\nc\n")
    shutil.rmtree(os.path.join(voc_copy, "Annotations"))
    ds = load_voc(voc_copy, "test", images_only=True, class_names=CLASSES)
    assert [r.image_id for r in ds.records] == ["a", "c"]
    assert all(len(r.boxes) == 0 for r in ds.records)
    assert (ds.records[0].height, ds.records[0].width) == (48, 64)  # from the image header
    assert any("not public" in n for n in ds.report.notes)
