"""Named datasets, user-declared specs, the datasets root, concatenation."""

import os
import shutil

import numpy as np
import pytest
from omegaconf import OmegaConf

from detectron_res.data.catalog import (
    BUILTIN_DATASETS,
    concat_datasets,
    datasets_root,
    get_dataset,
    get_datasets,
)
from detectron_res.data.dataset import DatasetError

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "data")
CLASSES = ["cat", "dog", "bird"]


@pytest.fixture
def root(tmp_path):
    """A datasets root holding the three fixtures, plus VOC2007/VOC2012 devkit copies."""
    r = tmp_path / "datasets"
    for sub in ("coco", "voc", "yolo"):
        shutil.copytree(os.path.join(FIX, sub), r / "mine" / sub)
    # VOC2007: the fixture's a, b, c; trainval = a b c, test = c
    v07 = r / "VOCdevkit" / "VOC2007"
    shutil.copytree(os.path.join(FIX, "voc", "VOC2007"), v07)
    (v07 / "ImageSets" / "Main" / "trainval.txt").write_text("a\nb\nc\n")
    (v07 / "ImageSets" / "Main" / "test.txt").write_text("c\n")
    # VOC2012: the same images renamed 2012_a, 2012_b (trainval) and 2012_c (test,
    # image only: VOC2012 test labels are not public)
    v12 = r / "VOCdevkit" / "VOC2012"
    shutil.copytree(os.path.join(FIX, "voc", "VOC2007"), v12)
    for stem, ext in (("a", ".jpg"), ("b", ".png"), ("c", ".jpg")):
        os.rename(v12 / "JPEGImages" / f"{stem}{ext}", v12 / "JPEGImages" / f"2012_{stem}{ext}")
        xml = v12 / "Annotations" / f"{stem}.xml"
        if stem == "c":
            os.remove(xml)
        else:
            (v12 / "Annotations" / f"2012_{stem}.xml").write_text(xml.read_text().replace(f">{stem}{ext}<", f">2012_{stem}{ext}<"))
            os.remove(xml)
    os.remove(v12 / "ImageSets" / "Main" / "train.txt")
    (v12 / "ImageSets" / "Main" / "trainval.txt").write_text("2012_a\n2012_b\n")
    (v12 / "ImageSets" / "Main" / "test.txt").write_text("2012_c\n")
    return str(r)


SPECS = {
    "my_coco": {"format": "coco", "image_root": "mine/coco/images", "annotation_file": "mine/coco/instances.json"},
    "my_voc": {"format": "voc", "voc_root": "mine/voc/VOC2007", "split": "train", "class_names": CLASSES},
    "my_yolo": {"format": "yolo", "yolo_root": "mine/yolo"},
}


def test_builtin_names():
    expected = {
        "coco_2014_train", "coco_2014_val", "coco_2017_train", "coco_2017_val",
        "voc_2007_trainval", "voc_2007_test", "voc_2012_trainval", "voc_2012_test",
        "shapes_train", "shapes_val", "shapes_voc_train", "shapes_voc_val", "shapes_yolo_train", "shapes_yolo_val",
    }  # fmt: skip
    assert expected <= set(BUILTIN_DATASETS)
    assert BUILTIN_DATASETS["coco_2017_val"]["annotation_file"] == "coco/annotations/instances_val2017.json"
    assert BUILTIN_DATASETS["voc_2012_test"]["images_only"] is True


def test_root_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DETECTRON_RES_DATASETS", str(tmp_path))
    assert datasets_root() == str(tmp_path)
    monkeypatch.delenv("DETECTRON_RES_DATASETS")
    monkeypatch.chdir(tmp_path)
    assert datasets_root() == os.path.join(str(tmp_path), "datasets")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_custom_specs_as_dict_and_config_node(root, name):
    ds = get_dataset(name, custom=SPECS, root=root)
    assert len(ds) == 3 and ds.name == name and ds.class_names == CLASSES
    np.testing.assert_allclose(ds.records[0].boxes[0], [10, 8, 30, 40], atol=1e-4)
    # the same spec through the lead's typed config (empty strings = unset)
    from detectron_res.config import load_config

    overrides = [f"data.datasets.{name}.{k}={v}" for k, v in SPECS[name].items() if k != "class_names"]
    if "class_names" in SPECS[name]:
        overrides.append(f"data.datasets.{name}.class_names=[cat,dog,bird]")
    cfg = load_config(None, overrides)
    ds2 = get_dataset(name, custom=cfg.data.datasets, root=root)
    assert [r.image_id for r in ds2.records] == [r.image_id for r in ds.records]
    # and as a plain OmegaConf node
    ds3 = get_dataset(name, custom=OmegaConf.create({name: SPECS[name]}), root=root)
    assert len(ds3) == 3


def test_env_root_is_used_by_builtin_names(root, monkeypatch):
    monkeypatch.setenv("DETECTRON_RES_DATASETS", root)
    ds = get_dataset("voc_2007_trainval")
    assert ds.extra["voc_root"] == os.path.join(root, "VOCdevkit", "VOC2007") and ds.extra["year"] == "2007"
    assert len(ds) == 3 and ds.class_names[0] == "aeroplane"


def test_relative_path_falls_back_to_cwd(root, tmp_path, monkeypatch):
    other = tmp_path / "elsewhere"
    shutil.copytree(os.path.join(FIX, "yolo"), other / "y")
    monkeypatch.chdir(other)
    ds = get_dataset("y", custom={"y": {"format": "yolo", "yolo_root": "y"}}, root=root)
    assert ds.extra["yolo_root"] == str(other / "y")


def test_unknown_name_and_bad_specs(root):
    with pytest.raises(ValueError, match=r"unknown dataset name 'voc_2007_trainvall'; did you mean 'voc_2007_trainval'\?"):
        get_dataset("voc_2007_trainvall", root=root)
    with pytest.raises(ValueError, match=r"data.datasets.x: format 'coco' needs field\(s\) \['annotation_file'\]"):
        get_dataset("x", custom={"x": {"format": "coco", "image_root": "a"}}, root=root)
    with pytest.raises(ValueError, match=r"data.datasets.x: format='tfrecord' is not supported"):
        get_dataset("x", custom={"x": {"format": "tfrecord"}}, root=root)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['image_rot'\].*did you mean 'image_root'\?"):
        get_dataset("x", custom={"x": {"format": "coco", "image_rot": "a"}}, root=root)
    with pytest.raises(DatasetError, match=r"annotation file .*nothere.json does not exist"):
        get_dataset("x", custom={"x": {"format": "coco", "image_root": "a", "annotation_file": "nothere.json"}}, root=root)


def test_voc_07_plus_12_concatenation(root):
    ds = get_datasets(["voc_2007_trainval", "voc_2012_trainval"], root=root)
    assert len(ds) == 5 and ds.format == "voc"
    assert [r.image_id for r in ds.records] == ["a", "b", "c", "2012_a", "2012_b"]
    assert ds.extra["parts"] == ["voc_2007_trainval", "voc_2012_trainval"]
    assert ds.report.num_images == 5 and ds.report.num_difficult == 2
    assert ds.report.fixed == {"box partly outside the image, clipped to it": 2}
    # 07++12 adds VOC2007 test
    ds = get_datasets(["voc_2007_trainval", "voc_2007_test", "voc_2012_trainval"], root=root)
    assert len(ds) == 6


def test_voc_2012_test_is_images_only(root):
    ds = get_dataset("voc_2012_test", root=root)
    assert [r.image_id for r in ds.records] == ["2012_c"] and len(ds.records[0].boxes) == 0


def test_concat_checks_label_space_and_makes_ids_unique(root):
    voc = get_dataset("my_voc", custom=SPECS, root=root)
    yolo = get_dataset("my_yolo", custom=SPECS, root=root)
    both = concat_datasets([voc, yolo])
    ids = [r.image_id for r in both.records]
    assert ids == ["my_voc/a", "my_voc/b", "my_voc/c", "my_yolo/a", "my_yolo/b", "my_yolo/c"]
    assert len(set(ids)) == len(ids) and both.format == "mixed"
    assert voc.records[0].image_id == "a"  # the parts are not modified
    coco = get_dataset("my_coco", custom=SPECS, root=root)
    with pytest.raises(ValueError, match=r"category ids differ between 'my_voc' \[1, 2, 3\] and 'my_coco' \[1, 3, 7\]"):
        concat_datasets([voc, coco])
    other = get_dataset("voc_2007_trainval", root=root)
    with pytest.raises(ValueError, match=r"label spaces differ between 'my_voc' \(3 classes\) and 'voc_2007_trainval' "
                                         r"\(20 classes\): label 1 is 'cat' vs 'aeroplane'"):
        concat_datasets([voc, other])
    with pytest.raises(ValueError, match="empty list"):
        concat_datasets([])


def test_filter_empty_through_the_catalog(root):
    ds = get_dataset("my_coco", custom=SPECS, root=root, filter_empty=True)
    assert [r.image_id for r in ds.records] == [1, 2]
