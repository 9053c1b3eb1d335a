"""Property-based tests (hypothesis) of the toolkit's geometry and evaluation (issue 10).

* Box conversions: the ones the toolkit performs (COCO ``x, y, w, h`` <-> ``x1, y1,
  x2, y2`` in the reader and in the results writer, YOLO normalized centre/size ->
  corners in the reader, VOC inclusive 1-based <-> continuous 0-based in the comp4
  writer/reader and the devkit XML reader) round trip.
* IoU: ``torchvision.ops.box_iou`` (the matchers' IoU) and ``voc_box_iou`` (the devkit's
  "+1" IoU) are symmetric, in [0, 1], 1 for a box with itself, and equal a naive
  pure-Python reference.
* Box coder: ``decode(encode(src, tgt), src) == tgt`` up to float32 rounding when the
  scale change is within the clamp; beyond it the size is clamped and the centre kept;
  and it agrees with torchvision's ``BoxCoder``.
* Transforms (the albumentations pipeline of the paper and demo configs): boxes stay
  inside the image with ``x1 <= x2``, ``y1 <= y2``, equal the geometric image of the input
  boxes, and the training loader's labels stay aligned with them.
* Evaluators: VOC and COCO AP in [0, 1] (percent in [0, 100]), perfect detections give
  1, and the order invariances the protocols define:

  - VOC (devkit ``VOCevaldet.m``: MATLAB's ``sort`` is stable): detections of a class
    are ranked by score, ties in the order given (comp4 line order; here, the order
    of the images in the predictions, then within an image). So the AP is invariant
    to the order of the ground-truth images always, and to any reordering of the
    detections that keeps the relative order of equal-score detections of a class.
    It is NOT invariant to the order of images when equal scores occur on different
    images (pinned by an example below).
  - COCO (pycocotools): ``evaluate`` sorts the image ids (``np.unique``), ``accumulate``
    concatenates the images in that order and ranks with ``np.argsort(-scores,
    kind="mergesort")`` (stable), and each image's detections are ranked the same way
    in ``evaluateImg``. So the AP is invariant to the order of images in the results,
    even with ties across images, and to any reordering that keeps the relative order
    of equal-score detections of the same image and category; swapping two tied
    detections of one image can change it (pinned by an example below).

Each test keeps ``max_examples`` small (the whole file runs in well under 40 s on 2 cores).
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torchvision.models.detection._utils import BoxCoder as TorchvisionBoxCoder
from torchvision.ops import box_iou

from detectron_res.config import load_config
from detectron_res.data.dataset import ImageRecord
from detectron_res.data.loader import DetectionMapDataset
from detectron_res.data.transforms import apply_transforms, build_transforms, get_resize_shape, scale_boxes
from detectron_res.evaluation.coco import (
    dataset_to_coco_dict,
    evaluate_coco,
    load_coco_gt,
    predictions_to_coco_results,
)
from detectron_res.evaluation.voc import (
    VOCGroundTruth,
    evaluate_voc,
    parse_voc_annotation,
    read_comp4,
    voc_box_iou,
    voc_eval_class,
    write_comp4,
)
from detectron_res.evaluation.voc_ap import _to_inclusive
from detectron_res.modeling.box_coder import BoxCoder
from detectron_res.structures import clip_boxes

PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------- strategies
def f32(lo: float, hi: float):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def xyxy(draw, lo=0.0, hi=1000.0, min_size=0.0, max_size=600.0):
    """One box (x1, y1, x2, y2) as float32-representable numbers, sizes in [min_size, max_size]."""
    x1, y1 = draw(f32(lo, hi)), draw(f32(lo, hi))
    w, h = draw(f32(min_size, max_size)), draw(f32(min_size, max_size))
    x2, y2 = np.float32(x1 + w), np.float32(y1 + h)
    assume(x2 - x1 >= min_size and y2 - y1 >= min_size)
    return [float(x1), float(y1), float(x2), float(y2)]


def box_array(boxes) -> np.ndarray:
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


# ----------------------------------------------------------------------------- IoU
def naive_iou(a, b, plus_one=False):
    """IoU of two boxes in plain Python floats; ``plus_one``: the devkit's inclusive pixels."""
    e = 1.0 if plus_one else 0.0
    iw = max(min(a[2], b[2]) - max(a[0], b[0]) + e, 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]) + e, 0.0)
    inter = iw * ih
    union = (a[2] - a[0] + e) * (a[3] - a[1] + e) + (b[2] - b[0] + e) * (b[3] - b[1] + e) - inter
    return inter / union if union > 0 else 0.0


@PROPS
@given(st.lists(xyxy(min_size=0.25), min_size=1, max_size=6), st.lists(xyxy(min_size=0.25), min_size=1, max_size=6))
def test_box_iou_properties(boxes1, boxes2):
    """The matchers' IoU (torchvision.ops.box_iou, float32) on boxes of positive size."""
    a, b = torch.tensor(boxes1), torch.tensor(boxes2)
    iou = box_iou(a, b)
    assert torch.equal(iou, box_iou(b, a).T)  # symmetric, bit for bit
    assert ((iou >= 0) & (iou <= 1)).all()
    assert torch.equal(torch.diagonal(box_iou(a, a)), torch.ones(len(a)))
    ref = torch.tensor([[naive_iou(x, y) for y in boxes2] for x in boxes1], dtype=torch.float64)
    torch.testing.assert_close(iou.double(), ref, atol=2e-5, rtol=1e-4)


@PROPS
@given(st.lists(xyxy(min_size=0.0, max_size=50), min_size=1, max_size=6),
       st.lists(xyxy(min_size=0.0, max_size=50), min_size=1, max_size=6))
def test_voc_box_iou_properties(boxes1, boxes2):
    """The devkit's IoU, zero-size boxes included (they overlap nothing)."""
    iou = voc_box_iou(box_array(boxes1), box_array(boxes2))
    np.testing.assert_array_equal(iou, voc_box_iou(box_array(boxes2), box_array(boxes1)).T)
    assert ((iou >= 0) & (iou <= 1)).all()
    self_iou = np.diagonal(voc_box_iou(box_array(boxes1), box_array(boxes1)))
    # Positive size in the devkit's arithmetic: xmax - (xmin + 1) + 1 > 0. A size below
    # float64's resolution at xmin + 1 (a 1e-38 px high box at y = 0) is 0 there, and
    # the box overlaps nothing, where continuous arithmetic would give IoU 1.
    incl = _to_inclusive(box_array(boxes1))
    positive = (incl[:, 2] - incl[:, 0] + 1.0 > 0) & (incl[:, 3] - incl[:, 1] + 1.0 > 0)
    np.testing.assert_array_equal(self_iou[positive], 1.0)
    np.testing.assert_array_equal(self_iou[~positive], 0.0)
    # The devkit's arithmetic on inclusive 1-based boxes ...
    incl1, incl2 = _to_inclusive(box_array(boxes1)).tolist(), _to_inclusive(box_array(boxes2)).tolist()
    ref = [[naive_iou(x, y, plus_one=True) for y in incl2] for x in incl1]
    np.testing.assert_allclose(iou, ref, rtol=1e-12, atol=1e-12)
    # ... is the plain continuous IoU in exact arithmetic (module docstring of voc.py),
    # for boxes whose size float64 resolves at coordinate + 1.
    resolved = [i for i, (x1, y1, x2, y2) in enumerate(box_array(boxes1).tolist())
                if min(x2 - x1, y2 - y1) == 0 or min(x2 - x1, y2 - y1) > 1e-9]
    cont = [[naive_iou(x, y) for y in box_array(boxes2).tolist()] for x in box_array(boxes1).tolist()]
    np.testing.assert_allclose(iou[resolved], np.asarray(cont).reshape(iou.shape)[resolved], rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------- box coder
CLAMP = math.log(1000.0 / 16)


@PROPS
@given(
    src=xyxy(lo=-200, hi=1200, min_size=1.0, max_size=500),
    tgt=xyxy(lo=-200, hi=1200, min_size=1.0, max_size=500),
    weights=st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]),
)
def test_box_coder_round_trip(src, tgt, weights):
    coder = BoxCoder(weights=weights)
    s, t = torch.tensor([src]), torch.tensor([tgt])
    deltas = coder.encode(s, t)
    assert torch.isfinite(deltas).all()
    # Sizes here differ by at most 500x; the clamp (62.5x) is exercised below.
    log_ratio = np.log([(tgt[2] - tgt[0]) / (src[2] - src[0]), (tgt[3] - tgt[1]) / (src[3] - src[1])])
    assume((log_ratio <= CLAMP - 1e-3).all())
    decoded = coder.decode(deltas, s)
    torch.testing.assert_close(decoded, t, atol=2e-3, rtol=2e-6)
    # torchvision's BoxCoder (same formulas, same clamp): the same deltas and boxes.
    tv = TorchvisionBoxCoder(weights=weights, bbox_xform_clip=CLAMP)
    torch.testing.assert_close(deltas, tv.encode_single(t, s), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(decoded, tv.decode_single(deltas, s), atol=2e-3, rtol=2e-6)


@PROPS
@given(
    src=xyxy(lo=0, hi=500, min_size=1.0, max_size=50),
    grow=st.tuples(st.floats(-12.0, 12.0), st.floats(-12.0, 12.0)),
    weights=st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]),
)
def test_box_coder_clamp_keeps_the_centre_and_caps_the_scale(src, grow, weights):
    """A target exp(grow) times the source size: decoded exactly when the log-scale is
    below log(1000/16), else the size is capped at 62.5x the source and the centre kept."""
    coder = BoxCoder(weights=weights)
    s = torch.tensor([src], dtype=torch.float64)
    cx, cy = (src[0] + src[2]) / 2 + 3.0, (src[1] + src[3]) / 2 - 2.0
    w, h = (src[2] - src[0]) * math.exp(grow[0]), (src[3] - src[1]) * math.exp(grow[1])
    t = torch.tensor([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]], dtype=torch.float64)
    decoded = coder.decode(coder.encode(s, t), s).double()[0]
    assert torch.isfinite(decoded).all() and decoded[2] >= decoded[0] and decoded[3] >= decoded[1]
    want_w = (src[2] - src[0]) * math.exp(min(grow[0], CLAMP))
    want_h = (src[3] - src[1]) * math.exp(min(grow[1], CLAMP))
    got = decoded.tolist()
    # The coder works in float32: the target's own rounding (relative 6e-8 of its
    # largest coordinate, up to 300k px here) bounds how well the centre comes back.
    tol = 1e-2 + 1e-6 * float(t.abs().max())
    for value, want in (((got[0] + got[2]) / 2, cx), ((got[1] + got[3]) / 2, cy), (got[2] - got[0], want_w),
                        (got[3] - got[1], want_h)):
        assert math.isclose(value, want, rel_tol=1e-4, abs_tol=tol), (value, want)


@PROPS
@given(
    deltas=st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=4, max_size=4),
    src=xyxy(lo=0, hi=1000, min_size=1.0, max_size=600),
)
def test_box_coder_decodes_any_finite_deltas_to_finite_boxes(deltas, src):
    """An untrained head's outputs: never inf / NaN, never inverted (clamp on dw, dh)."""
    out = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)).decode(torch.tensor([deltas]), torch.tensor([src]))[0]
    assert torch.isfinite(out).all() and out[2] >= out[0] and out[3] >= out[1]
    clipped = clip_boxes(out, torch.tensor([600.0, 800.0]))
    assert (clipped[0::2] >= 0).all() and (clipped[0::2] <= 800).all() and (clipped[1::2] <= 600).all()
    assert clipped[2] >= clipped[0] and clipped[3] >= clipped[1]


# ----------------------------------------------------------------------------- conversions
@FEW
@given(
    size=st.tuples(st.integers(8, 64), st.integers(8, 64)),
    boxes=st.lists(st.tuples(f32(0, 1), f32(0, 1), f32(0, 1), f32(0, 1)), min_size=1, max_size=5),
)
def test_coco_xywh_round_trip(size, boxes):
    """Ground truth -> COCO json (x, y, w, h) -> the COCO reader (x1, y1, x2, y2), and
    detections -> COCO results -> pycocotools' loaded results."""
    from types import SimpleNamespace

    from detectron_res.data.coco import load_coco_json

    h, w = size
    xyxy_px = []
    for a, b, c, d in boxes:
        x1, x2 = sorted((a * w, c * w))
        y1, y2 = sorted((b * h, d * h))
        assume(x2 - x1 > 1e-3 and y2 - y1 > 1e-3)
        xyxy_px.append([x1, y1, x2, y2])
    boxes32 = box_array(xyxy_px)
    labels = np.arange(1, len(boxes32) + 1)
    names = [f"c{i}" for i in labels]
    record = SimpleNamespace(image_id=7, height=h, width=w, file_name="im.png", boxes=boxes32, labels=labels)
    ds = SimpleNamespace(name="prop", class_names=names, category_ids=list(range(10, 10 + len(names))),
                         records=[record])
    coco = dataset_to_coco_dict(ds)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "instances.json"
        path.write_text(json.dumps(coco))
        back = load_coco_json(str(path), d, check_images="none").records[0]
    np.testing.assert_array_equal(back.boxes, boxes32)  # float64 w = x2 - x1 is exact for float32 inputs
    np.testing.assert_array_equal(back.labels, labels)

    results = predictions_to_coco_results({7: {"boxes": boxes32, "scores": np.linspace(1, 0.5, len(labels)),
                                               "labels": labels}}, ds.category_ids)
    coco_dt = load_coco_gt(coco).loadRes(results) if results else None
    for ann, box, label in zip(coco_dt.dataset["annotations"], boxes32.astype(np.float64), labels):
        x, y, bw, bh = ann["bbox"]
        assert ann["category_id"] == ds.category_ids[label - 1]
        np.testing.assert_array_equal([x, y, x + bw, y + bh], box)
        assert math.isclose(ann["area"], bw * bh)


@FEW
@given(
    size=st.tuples(st.integers(8, 64), st.integers(8, 64)),
    boxes=st.lists(st.tuples(f32(0, 1), f32(0, 1), f32(0, 1), f32(0, 1)), min_size=1, max_size=5),
)
def test_yolo_centre_size_to_corners(size, boxes):
    """x1, y1, x2, y2 -> normalized cx cy w h written the way exporters do -> the YOLO reader."""
    from detectron_res.data.yolo import load_yolo

    h, w = size
    corners, lines = [], []
    for i, (a, b, c, d) in enumerate(boxes):
        x1, x2 = sorted((a * w, c * w))
        y1, y2 = sorted((b * h, d * h))
        assume(x2 - x1 > 1e-3 and y2 - y1 > 1e-3)
        corners.append([x1, y1, x2, y2])
        lines.append(f"{i} {(x1 + x2) / 2 / w!r} {(y1 + y2) / 2 / h!r} {(x2 - x1) / w!r} {(y2 - y1) / h!r}")
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "images").mkdir()
        (Path(d) / "labels").mkdir()
        assert cv2.imwrite(str(Path(d) / "images" / "a.png"), np.zeros((h, w, 3), np.uint8))
        (Path(d) / "labels" / "a.txt").write_text("\n".join(lines) + "\n")
        ds = load_yolo(d, class_names=[f"c{i}" for i in range(len(lines))])
    record = ds.records[0]
    order = np.argsort(record.labels)
    np.testing.assert_array_equal(record.labels[order], np.arange(1, len(lines) + 1))
    np.testing.assert_allclose(record.boxes[order], corners, rtol=1e-6, atol=1e-4)


@PROPS
@given(st.lists(st.tuples(xyxy(min_size=0.0), st.floats(0, 1)), min_size=0, max_size=8))
def test_comp4_round_trip(dets):
    """write_comp4 (inclusive 1-based) then read_comp4 (back to 0-based): the devkit's
    inclusive coordinates and the scores come back bit for bit, so the AP does too.

    The 0-based values come back exactly only where ``x + 1`` is exact in float64,
    i.e. not for coordinates below 2**-29 px (e.g. 1e-30 reads back as 0.0): the
    devkit's arithmetic itself starts from ``x + 1``, which is why its IoU and AP are
    unchanged.
    """
    boxes = box_array([b for b, _ in dets])
    scores = np.array([s for _, s in dets], dtype=np.float64)
    ids = [f"{i % 3:06d}" for i in range(len(dets))]
    with tempfile.TemporaryDirectory() as d:
        write_comp4(d, "test", ["thing", "empty"], {"thing": {"image_ids": ids, "scores": scores, "boxes": boxes}})
        back = read_comp4(d, "test", ["thing", "empty"])
    assert back["thing"]["image_ids"] == ids and len(back["empty"]["scores"]) == 0
    np.testing.assert_array_equal(back["thing"]["scores"], scores)
    np.testing.assert_array_equal(_to_inclusive(back["thing"]["boxes"]), _to_inclusive(boxes))
    gt = {f"{i:06d}": {"boxes": boxes[i::3]} for i in range(3)}
    a = voc_eval_class(gt, {"image_ids": ids, "scores": scores, "boxes": boxes}, use_07_metric=False)[0]
    b = voc_eval_class(gt, back["thing"], use_07_metric=False)[0]
    assert (math.isnan(a) and math.isnan(b)) or a == b


@PROPS
@given(st.lists(st.tuples(st.integers(1, 500), st.integers(1, 500), st.integers(0, 300), st.integers(0, 300)),
                min_size=0, max_size=5))
def test_voc_xml_inclusive_to_continuous(objects):
    """Devkit XML (inclusive, 1-based integers) -> toolkit boxes: (xmin - 1, ymin - 1, xmax, ymax),
    widths xmax - xmin + 1."""
    body = "".join(
        f"<object><name>c</name><difficult>{i % 2}</difficult><bndbox><xmin>{x}</xmin><ymin>{y}</ymin>"
        f"<xmax>{x + w}</xmax><ymax>{y + h}</ymax></bndbox></object>"
        for i, (x, y, w, h) in enumerate(objects)
    )
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "000001.xml"
        path.write_text(f"<annotation><filename>000001.jpg</filename><size><width>900</width><height>900</height>"
                        f"</size>{body}</annotation>")
        ann = parse_voc_annotation(path)
    want = [[x - 1, y - 1, x + w, y + h] for x, y, w, h in objects]
    np.testing.assert_array_equal(ann["boxes"], np.asarray(want, dtype=np.float32).reshape(-1, 4))
    np.testing.assert_array_equal(ann["boxes"][:, 2] - ann["boxes"][:, 0], [w + 1 for _, _, w, _ in objects])
    assert ann["difficult"].tolist() == [bool(i % 2) for i in range(len(objects))]


# ----------------------------------------------------------------------------- transforms
PAPER = load_config(None, [])  # Appendix A: shorter side 600, longer <= 1000, flip 0.5
DEMO = load_config("demo_shapes.yaml", [])  # multi-scale 192/224/256, longer <= 384


@FEW
@given(
    size=st.tuples(st.integers(4, 160), st.integers(4, 160)),
    boxes=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)), max_size=6),
    cfg_name=st.sampled_from(["paper", "demo", "demo_photometric", "no_cap"]),
    flip=st.sampled_from([None, 0.0, 1.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_training_transforms_keep_boxes_valid_and_labels_aligned(size, boxes, cfg_name, flip, seed):
    """The training loader's sample (DetectionMapDataset + the configured albumentations
    pipeline): every box is inside the image with x1 <= x2 and y1 <= y2, equals the
    resize (and flip) of its input box, and keeps its label; difficult boxes are left
    out of training and nothing else is dropped."""
    h, w = size
    inp = CONFIG_INPUTS[cfg_name]
    in_boxes = []
    for a, b, c, d in boxes:
        x1, x2 = sorted((a * w, c * w))
        y1, y2 = sorted((b * h, d * h))
        # The readers drop boxes without area; albumentations also drops boxes below
        # 1e-7 px^2 (test_tiny_and_empty_boxes below): sizes >= 0.01 px stay above it
        # after any of these resizes (at most 4x smaller per side).
        assume(x2 - x1 >= 0.01 and y2 - y1 >= 0.01)
        in_boxes.append([x1, y1, x2, y2])
    in_boxes = box_array(in_boxes)
    n = len(in_boxes)
    labels = np.arange(1, n + 1)  # one label per box: alignment is checkable
    difficult = np.arange(n) % 3 == 2
    transform = build_transforms(is_train=True, min_sizes=inp["min_sizes"], max_size=inp["max_size"],
                                 hflip_prob=inp["hflip_prob"] if flip is None else flip,
                                 photometric=inp["photometric"])
    with tempfile.TemporaryDirectory() as d:
        file_name = str(Path(d) / "im.png")
        rng = np.random.default_rng(seed)
        assert cv2.imwrite(file_name, rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        record = ImageRecord(image_id=1, file_name=file_name, height=h, width=w, boxes=in_boxes, labels=labels,
                             difficult=difficult)
        sample = DetectionMapDataset([record], transform, is_train=True, input_format="BGR")[(0, seed)]
    image, out, out_labels = sample["image"], sample["boxes"].numpy(), sample["labels"].numpy()
    nh, nw = image.shape[1:]
    assert (nh, nw) in {get_resize_shape(h, w, s, inp["max_size"]) for s in inp["min_sizes"]}
    assert sample["image_size"] == (nh, nw)
    # valid boxes
    assert (out[:, 0] >= 0).all() and (out[:, 1] >= 0).all() and (out[:, 2] <= nw).all() and (out[:, 3] <= nh).all()
    assert (out[:, 0] <= out[:, 2]).all() and (out[:, 1] <= out[:, 3]).all()
    # nothing but the difficult boxes dropped; labels aligned with their boxes
    assert out_labels.tolist() == labels[~difficult].tolist()
    expected = scale_boxes(in_boxes[out_labels - 1], (h, w), (nh, nw)).astype(np.float64)
    flipped = expected.copy()
    flipped[:, [0, 2]] = nw - expected[:, [2, 0]]
    tol = dict(atol=1e-3 * max(nw, nh) / min(nw, nh) + 1e-3, rtol=1e-5)
    candidates = [expected, flipped] if flip is None else [flipped if flip == 1.0 else expected]
    assert any(np.allclose(out, c, **tol) for c in candidates), (out, candidates)


def test_tiny_and_empty_boxes(caplog):
    """Boxes albumentations cannot carry: no area is a clear error (never a crash deep in
    albumentations), and a box under its 1e-7 px^2 floor is left out with a warning,
    the other boxes keeping their indices."""
    transform = build_transforms(is_train=True, min_sizes=[8], max_size=0, hflip_prob=0.0)
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match=r"box 1 \[0.0, 0.0, 1.0, 0.0\] has no area"):
        apply_transforms(transform, image, np.array([[0, 0, 1, 1], [0, 0, 1, 0]]))
    with pytest.raises(ValueError, match="not finite"):
        apply_transforms(transform, image, np.array([[0, 0, np.nan, 1]]))
    with caplog.at_level("WARNING", logger="detectron_res.data.transforms"):
        _, out, kept = apply_transforms(transform, image, np.array([[0, 0, 1, 1e-12], [1, 1, 2, 2]]))
    assert kept.tolist() == [1] and np.allclose(out, [[2, 2, 4, 4]])
    assert "1 box(es) with less than 1e-07 square pixels" in caplog.text


CONFIG_INPUTS = {
    "paper": dict(min_sizes=list(PAPER.input.min_size_train), max_size=int(PAPER.input.max_size_train),
                  hflip_prob=float(PAPER.input.hflip_prob), photometric=bool(PAPER.input.photometric)),
    "demo": dict(min_sizes=list(DEMO.input.min_size_train), max_size=int(DEMO.input.max_size_train),
                 hflip_prob=float(DEMO.input.hflip_prob), photometric=bool(DEMO.input.photometric)),
    "demo_photometric": dict(min_sizes=list(DEMO.input.min_size_train), max_size=int(DEMO.input.max_size_train),
                             hflip_prob=0.5, photometric=True),
    "no_cap": dict(min_sizes=[40, 64], max_size=0, hflip_prob=0.5, photometric=False),
}


# ----------------------------------------------------------------------------- evaluators
@st.composite
def detection_problem(draw, max_images=4, num_classes=2, grid=12, score_levels=None):
    """Ground truth and detections on a coarse grid (so that IoUs tie and exact
    matches happen), scores from a few levels when ``score_levels`` (ties)."""
    n_images = draw(st.integers(1, max_images))
    image_ids = [f"im{i}" for i in range(n_images)]
    cell = st.integers(0, grid)

    def box():
        x1, y1 = draw(cell), draw(cell)
        return [x1 * 4.0, y1 * 4.0, (x1 + draw(st.integers(1, 5))) * 4.0, (y1 + draw(st.integers(1, 5))) * 4.0]

    gt, preds = {}, {}
    for image_id in image_ids:
        k = draw(st.integers(0, 3))
        gt[image_id] = {"boxes": [box() for _ in range(k)],
                        "labels": [draw(st.integers(1, num_classes)) for _ in range(k)],
                        "difficult": [draw(st.booleans()) and draw(st.booleans()) for _ in range(k)]}
        m = draw(st.integers(0, 4))
        score = st.sampled_from(score_levels) if score_levels else st.floats(0.01, 1.0)
        preds[image_id] = {"boxes": [box() for _ in range(m)], "scores": [draw(score) for _ in range(m)],
                           "labels": [draw(st.integers(1, num_classes)) for _ in range(m)]}
    return gt, preds


CLASSES = ["a", "b"]


def voc_map(gt, preds, use_07_metric, *, gt_order=None, pred_order=None):
    """The toolkit's VOC evaluation: ground truth in ``gt_order``, predictions split by
    class in ``pred_order`` of the images (the order comp4 files would list them)."""
    from detectron_res.evaluation.voc import split_by_class

    return evaluate_voc(_voc_gt(gt, gt_order), split_by_class({i: preds[i] for i in (pred_order or list(preds))},
                                                                CLASSES),
                        use_07_metric=use_07_metric, iou_threshs=[0.5, 0.75])[0]


def _voc_gt(gt, order=None):
    order = order or list(gt)
    return VOCGroundTruth(image_ids=order, boxes=[gt[i]["boxes"] for i in order],
                          labels=[gt[i]["labels"] for i in order], difficult=[gt[i]["difficult"] for i in order],
                          class_names=CLASSES)


def coco_ap(gt, preds, results=None):
    ids = {name: i + 1 for i, name in enumerate(gt)}
    records = [_record(ids[k], v) for k, v in gt.items()]
    from types import SimpleNamespace

    coco_gt = load_coco_gt(dataset_to_coco_dict(SimpleNamespace(name="p", class_names=CLASSES, records=records)))
    if results is None:
        results = coco_results(gt, preds)
    metrics, _, _ = evaluate_coco(coco_gt, results)
    return metrics


def coco_results(gt, preds):
    ids = {name: i + 1 for i, name in enumerate(gt)}
    return predictions_to_coco_results({ids[k]: v for k, v in preds.items()}, [1, 2])


def _record(image_id, g):
    from types import SimpleNamespace

    return SimpleNamespace(image_id=image_id, height=100, width=100, file_name="", boxes=box_array(g["boxes"]),
                           labels=np.asarray(g["labels"], dtype=np.int64), difficult=np.asarray(g["difficult"]),
                           iscrowd=np.zeros(len(g["boxes"]), bool))


def _ap_values(metrics, keys):
    values = []
    for key in keys:
        v = metrics[key]
        values += list(v.values()) if isinstance(v, dict) else [v]
    return [v for v in values if not math.isnan(v)]


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _same(a[k], b[k])
        else:
            assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k], (k, a[k], b[k])


def tie_preserving_permutation(keys, rng):
    """A random permutation of range(len(keys)) in which items with equal keys keep
    their relative order."""
    perm = list(rng.permutation(len(keys)))
    groups = {}
    for position, item in enumerate(perm):
        groups.setdefault(keys[item], []).append(position)
    for positions in groups.values():
        members = sorted(perm[p] for p in positions)
        for p, m in zip(positions, members):
            perm[p] = m
    return perm


@PROPS
@given(problem=detection_problem(), use_07=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_voc_ap_bounds_and_order_invariance(problem, use_07, seed):
    gt, preds = problem
    rng = np.random.default_rng(seed)
    metrics = voc_map(gt, preds, use_07)
    for v in _ap_values(metrics, ["mAP50", "mAP75", "mAP50_95", "per_class", "per_class_50_95"]):
        # the devkit's 11-point sum of p / 11 gives 100.00000000000003 for a perfect class
        assert 0.0 <= v <= 100.0 + 1e-12
    # The ground truth's image order never matters.
    _same(metrics, voc_map(gt, preds, use_07, gt_order=[list(gt)[i] for i in rng.permutation(len(gt))]))
    # Any reordering of the detections that keeps equal-score detections of a class in
    # their relative order (MATLAB's stable sort) gives the same numbers, bit for bit.
    # The comp4 layout (one list per class) allows any interleaving of the images.
    flat = [(i, j) for i in preds for j in range(len(preds[i]["scores"]))]
    keys = [(preds[i]["labels"][j], preds[i]["scores"][j]) for i, j in flat]
    reordered = {name: {"image_ids": [], "scores": [], "boxes": []} for name in CLASSES}
    for p in tie_preserving_permutation(keys, rng):
        i, j = flat[p]
        d = reordered[CLASSES[preds[i]["labels"][j] - 1]]
        d["image_ids"].append(i)
        d["scores"].append(preds[i]["scores"][j])
        d["boxes"].append(preds[i]["boxes"][j])
    for d in reordered.values():
        d["boxes"] = box_array(d["boxes"])
    _same(metrics, evaluate_voc(_voc_gt(gt), reordered, use_07_metric=use_07, iou_threshs=[0.5, 0.75])[0])
    # Without equal scores, the order of the images in the predictions is free as well.
    if len({s for i in preds for s in preds[i]["scores"]}) == len(flat):
        _same(metrics, voc_map(gt, preds, use_07, pred_order=[list(preds)[i] for i in rng.permutation(len(preds))]))


@PROPS
@given(problem=detection_problem(), use_07=st.booleans())
def test_voc_perfect_detections_give_ap_1(problem, use_07):
    gt, _ = problem
    # Two identical boxes of one class on one image: the devkit matches every detection
    # to the FIRST box of largest IoU, so the second copy can never be found (protocol).
    for g in gt.values():
        pairs = list(zip(map(tuple, g["boxes"]), g["labels"]))
        assume(len(set(pairs)) == len(pairs))
    # Every ground-truth box detected exactly once, difficult ones too (a match to a
    # difficult object is ignored, not a false positive), with distinct scores.
    preds = {i: {"boxes": g["boxes"], "labels": g["labels"],
                 "scores": [1.0 - 0.01 * k - 0.1 * n for k in range(len(g["boxes"]))]}
             for n, (i, g) in enumerate(gt.items())}
    metrics = voc_map(gt, preds, use_07)
    for name in CLASSES:
        has_positive = any(lab == CLASSES.index(name) + 1 and not dif for g in gt.values()
                           for lab, dif in zip(g["labels"], g["difficult"]))
        ap = metrics["per_class"][name]
        # (the devkit's 11-point sum of p / 11 gives 100.00000000000003 for a perfect class)
        assert ap == pytest.approx(100.0, abs=1e-12) if has_positive else math.isnan(ap), (name, ap)
        assert metrics["per_class_50_95"][name] == pytest.approx(100.0, abs=1e-12) if has_positive else math.isnan(ap)


@FEW
@given(problem=detection_problem(score_levels=[0.3, 0.6, 0.9]), seed=st.integers(0, 2**32 - 1))
def test_coco_ap_bounds_and_order_invariance(problem, seed):
    gt, preds = problem
    rng = np.random.default_rng(seed)
    results = coco_results(gt, preds)
    metrics = coco_ap(gt, preds, results)
    for v in _ap_values(metrics, ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100",
                                  "per_class", "per_class_AP50"]):
        assert 0.0 <= v <= 100.0
    # Reordering the results list while keeping equal-score detections of the same
    # image and category in their relative order: the same numbers. The order of the
    # images (ties across images included) is free.
    keys = [(r["image_id"], r["category_id"], r["score"]) for r in results]
    perm = tie_preserving_permutation(keys, rng)
    _same(metrics, coco_ap(gt, preds, [results[p] for p in perm]))


@FEW
@given(problem=detection_problem())
def test_coco_perfect_detections_give_ap_100(problem):
    gt, _ = problem
    assume(any(not d for g in gt.values() for d in g["difficult"]))  # something to find
    preds = {i: {"boxes": g["boxes"], "labels": g["labels"], "scores": [0.9] * len(g["boxes"])}
             for i, g in gt.items()}  # ties everywhere: perfect detections do not depend on order
    metrics = coco_ap(gt, preds)
    assert metrics["AP"] == pytest.approx(100.0, abs=1e-9) and metrics["AP50"] == pytest.approx(100.0, abs=1e-9)


# ----------------------------------------------------------------------------- what ties do (pinned examples)
def test_voc_ties_follow_the_given_order():
    """One object; a true and a false positive with the same score. Devkit rule: the
    one given first ranks first, so the AP depends on the order (1.0 vs 0.5 with the
    11-point metric), and so on the order of the images when they are on different
    images."""
    gt = {"im0": {"boxes": [[0, 0, 10, 10]]}, "im1": {"boxes": []}}
    tp_first = {"image_ids": ["im0", "im1"], "scores": [0.5, 0.5], "boxes": [[0, 0, 10, 10], [0, 0, 10, 10]]}
    fp_first = {"image_ids": ["im1", "im0"], "scores": [0.5, 0.5], "boxes": [[0, 0, 10, 10], [0, 0, 10, 10]]}
    assert voc_eval_class(gt, tp_first, use_07_metric=True)[0] == pytest.approx(1.0, abs=1e-15)
    assert voc_eval_class(gt, fp_first, use_07_metric=True)[0] == pytest.approx(0.5)


def test_coco_ties_across_images_do_not_depend_on_order_within_an_image_they_do():
    """pycocotools ranks ties by image id across images (whatever the results order) and
    by results order within an image."""
    gt = {"im0": {"boxes": [[0, 0, 40, 40]], "labels": [1], "difficult": [False]},
          "im1": {"boxes": [[0, 0, 40, 40]], "labels": [1], "difficult": [False]}}
    hit, miss = [0, 0, 40, 40], [60, 60, 90, 90]
    # Across images: a hit on im1 and a miss on im0 at equal score, in both orders.
    a = {"im0": {"boxes": [miss], "scores": [0.5], "labels": [1]},
         "im1": {"boxes": [hit], "scores": [0.5], "labels": [1]}}
    results = coco_results(gt, a)
    assert coco_ap(gt, a, results)["AP"] == coco_ap(gt, a, results[::-1])["AP"]
    # Within one image: hit then miss, or miss then hit, at equal score.
    b = {"im0": {"boxes": [hit, miss], "scores": [0.5, 0.5], "labels": [1, 1]},
         "im1": {"boxes": [], "scores": [], "labels": []}}
    results = coco_results(gt, b)
    assert coco_ap(gt, b, results)["AP"] != coco_ap(gt, b, results[::-1])["AP"]
