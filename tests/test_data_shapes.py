"""The demo dataset: deterministic, idempotent, and the same boxes through all readers."""

import filecmp
import json
import os

import numpy as np
import pytest

from detectron_res.data.catalog import get_dataset
from detectron_res.data.shapes import SHAPES_CLASS_NAMES, generate_shapes_dataset, main
from detectron_res.data.voc import load_voc
from detectron_res.outputs import OutputError

SMALL = dict(num_train=12, num_val=4, image_size=(64, 128), seed=3)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    info = generate_shapes_dataset(str(root / "shapes"), **SMALL)
    assert info["generated"]
    return str(root)


def _assert_same_records(a, b, atol):
    assert len(a) == len(b)
    for ra, rb in zip(a.records, b.records):
        assert os.path.basename(ra.file_name) == os.path.basename(rb.file_name)
        assert (ra.height, ra.width) == (rb.height, rb.width)
        np.testing.assert_array_equal(ra.labels, rb.labels)
        np.testing.assert_allclose(ra.boxes, rb.boxes, atol=atol, rtol=0)


@pytest.mark.parametrize("split", ["train", "val"])
def test_three_readers_agree_on_every_image(shapes_root, split):
    coco = get_dataset(f"shapes_{split}", root=shapes_root)
    voc = get_dataset(f"shapes_voc_{split}", root=shapes_root)
    yolo = get_dataset(f"shapes_yolo_{split}", root=shapes_root)
    n = SMALL["num_train"] if split == "train" else SMALL["num_val"]
    assert len(coco) == n
    for ds in (coco, voc, yolo):
        assert ds.class_names == list(SHAPES_CLASS_NAMES)
        # integer corners: nothing is clipped, dropped or mismatched
        assert not ds.report.fixed and not ds.report.skipped and not ds.report.size_mismatches
    # VOC's integers encode the integer corners exactly
    _assert_same_records(coco, voc, atol=0)
    # YOLO: 6 decimals of a normalized value, times at most 128 px
    _assert_same_records(coco, yolo, atol=128 * 1e-6)
    for rc, rv in zip(coco.records, voc.records):
        np.testing.assert_array_equal(rc.difficult, rv.difficult)


def test_content_is_a_varied_detection_dataset(shapes_root):
    ds = get_dataset("shapes_train", root=shapes_root)
    boxes = np.concatenate([r.boxes for r in ds.records])
    labels = np.concatenate([r.labels for r in ds.records])
    difficult = np.concatenate([r.difficult for r in ds.records])
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert set(labels.tolist()) == {1, 2, 3, 4}
    assert (sides[~difficult] >= 16).all() and (np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) <= 100).all()
    # tiny objects, and only those, are difficult
    assert difficult.any() and (sides[difficult] < 12).all()
    assert np.array_equal(boxes, np.round(boxes))  # integer corners
    sizes = {(r.height, r.width) for r in ds.records}
    assert len(sizes) > 1 and all(64 <= h <= 128 and 64 <= w <= 128 for h, w in sizes)
    # the images are real pixels, not blank: objects differ from the background
    from detectron_res.data.image_io import read_image

    img = read_image(ds.records[0].file_name, format="RGB").astype(float)
    x1, y1, x2, y2 = ds.records[0].boxes[0].astype(int)
    assert img.std() > 10 and img[y1:y2, x1:x2].std() != img.std()


def test_layout_and_hard_links(shapes_root):
    root = os.path.join(shapes_root, "shapes")
    for p in (
        "annotations/instances_train.json", "annotations/instances_val.json",
        "VOCdevkit/VOC2007/ImageSets/Main/train.txt", "VOCdevkit/VOC2007/ImageSets/Main/val.txt",
        "yolo/classes.txt", "yolo/train/labels/train_00000.txt", "images/val/val_00000.jpg",
    ):  # fmt: skip
        assert os.path.isfile(os.path.join(root, p)), p
    a = os.path.join(root, "images", "train", "train_00000.jpg")
    b = os.path.join(root, "VOCdevkit", "VOC2007", "JPEGImages", "train_00000.jpg")
    assert filecmp.cmp(a, b, shallow=False)
    ids = [im["id"] for s in ("train", "val") for im in json.load(open(os.path.join(root, f"annotations/instances_{s}.json")))["images"]]
    assert len(ids) == len(set(ids))  # image ids unique across splits


def test_deterministic_and_idempotent(tmp_path, shapes_root):
    out = str(tmp_path / "again")
    assert generate_shapes_dataset(out, **SMALL)["generated"]
    ref = os.path.join(shapes_root, "shapes")
    for p in ("annotations/instances_train.json", "images/train/train_00005.jpg", "VOCdevkit/VOC2007/Annotations/val_00002.xml", "yolo/val/labels/val_00003.txt"):
        assert filecmp.cmp(os.path.join(ref, p), os.path.join(out, p), shallow=False), p
    stamp = os.path.getmtime(os.path.join(out, "annotations", "instances_train.json"))
    info = generate_shapes_dataset(out, **SMALL)
    assert info["generated"] is False  # same parameters: nothing written
    assert os.path.getmtime(os.path.join(out, "annotations", "instances_train.json")) == stamp
    # other parameters: refused (the folder holds a dataset made earlier), replaced with force
    with pytest.raises(OutputError, match=r"holds a shapes dataset made with other parameters .*--force"):
        generate_shapes_dataset(out, **{**SMALL, "num_train": 3, "seed": 4})
    assert os.path.getmtime(os.path.join(out, "annotations", "instances_train.json")) == stamp
    info = generate_shapes_dataset(out, **{**SMALL, "num_train": 3, "seed": 4}, force=True)
    assert info["generated"]
    assert len(os.listdir(os.path.join(out, "images", "train"))) == 3
    assert len(load_voc(os.path.join(out, "VOCdevkit", "VOC2007"), "train", class_names=SHAPES_CLASS_NAMES)) == 3


def test_command_line(tmp_path, capsys):
    out = str(tmp_path / "cli")
    assert main(["--out", out, "--num-train", "2", "--num-val", "1", "--min-size", "64", "--max-size", "80"]) == 0
    assert "wrote shapes dataset" in capsys.readouterr().out
    assert main(["--out", out, "--num-train", "2", "--num-val", "1", "--min-size", "64", "--max-size", "80"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["--out", out, "--min-size", "10"]) == 2
    assert "expected (min, max) side lengths with 32 <= min <= max" in capsys.readouterr().err
    # another dataset in the folder: refused with one line, kept; --force replaces it
    capsys.readouterr()
    assert main(["--out", out, "--num-train", "3", "--num-val", "1", "--min-size", "64", "--max-size", "80"]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert len(os.listdir(os.path.join(out, "images", "train"))) == 2
    assert main(["--out", out, "--num-train", "3", "--num-val", "1", "--min-size", "64", "--max-size", "80",
                 "--force"]) == 0


@pytest.mark.slow


def test_default_demo_dataset_agrees_across_readers(tmp_path):
    info = generate_shapes_dataset(str(tmp_path / "shapes"))
    assert info["num_train"] == 600 and info["num_val"] == 100
    for split in ("train", "val"):
        coco = get_dataset(f"shapes_{split}", root=str(tmp_path))
        _assert_same_records(coco, get_dataset(f"shapes_voc_{split}", root=str(tmp_path)), atol=0)
        _assert_same_records(coco, get_dataset(f"shapes_yolo_{split}", root=str(tmp_path)), atol=256 * 1e-6)
