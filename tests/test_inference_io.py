"""detectron_res.inference_io from Python, and Predictor.read_image (what tools/infer.py runs on).

tests/test_infer.py drives the same code through the command line; here the three
steps are called directly: discover_inputs -> plan_outputs (checked) -> predict_files,
and the results are compared with the Predictor called on the same files.
"""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detectron_res.data.image_io import ImageReadError, read_image
from detectron_res.inference_io import discover_inputs, plan_outputs, predict_files
from detectron_res.outputs import OutputError
from detectron_res.predictor import Predictor
from helpers import make_tiny_checkpoint, synthetic_image


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    checkpoint = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model_final.pth")
    return Predictor(checkpoint, device="cpu", precision="fp32", score_thresh=0.1)


def test_discover_plan_and_predict_files_match_the_predictor(predictor, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.png"), synthetic_image(70, 100, seed=1))
    cv2.imwrite(str(photos / "b.jpg"), synthetic_image(60, 90, seed=2))
    (photos / "c.png").write_bytes(b"not an image")
    inputs, failures, ignored, skipped = discover_inputs([str(photos), str(tmp_path / "missing.png")])
    assert [i.path.name for i in inputs] == ["a.png", "b.jpg", "c.png"] and (ignored, skipped) == (0, 0)
    assert [(f.name, f.reason) for f in failures] == [(str(tmp_path / "missing.png"), "no such file or folder")]

    out = tmp_path / "out"
    plan = plan_outputs(out, inputs)
    plan.check(overwrite=False)
    skipped_now, done = [], []
    result = predict_files(predictor, plan, failures=failures, on_skip=skipped_now.append, on_progress=done.append)
    assert [f.name for f in skipped_now] == [str(photos / "c.png")] and sum(done) == 3
    assert (result.stats.images, len(result.stats.failures)) == (2, 2) and result.summary_written

    summary = json.loads((out / "predictions.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    assert [f["file_name"] for f in summary["failed"]] == [str(tmp_path / "missing.png"), str(photos / "c.png")]
    for name, stem in (("a.png", "a_png"), ("b.jpg", "b_jpg")):
        record = json.loads((out / f"{stem}.json").read_text())
        expected = predictor(str(photos / name))  # the Predictor on the path: same decoding, same model
        assert record["num_detections"] == len(expected) > 0
        np.testing.assert_allclose([d["box"] for d in record["detections"]], expected.boxes, atol=1e-3)
        assert [d["class_name"] for d in record["detections"]] == expected.class_names
        assert Path(record["annotated_image"]) == out / f"{stem}{Path(name).suffix}"
        assert cv2.imread(record["annotated_image"]) is not None

    # The same plan again: every file it would write exists, so the check refuses before any work.
    with pytest.raises(OutputError, match="already exists"):
        plan_outputs(out, inputs).check(overwrite=False)


def test_read_image_keeps_the_configs_pixel_limit(predictor, tmp_path):
    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), synthetic_image(40, 50, seed=3))
    np.testing.assert_array_equal(predictor.read_image(path, format="RGB"), read_image(path, format="RGB"))
    assert predictor.input_format == "BGR"
    np.testing.assert_array_equal(predictor.read_image(path), cv2.imread(str(path)))
    small = Predictor(predictor.checkpoint_path, device="cpu", overrides=["data.max_pixels=1000"])
    with pytest.raises(ImageReadError, match="wide.png"):
        small.read_image(path)  # 2000 pixels > data.max_pixels
    with pytest.raises(ImageReadError, match="wide.png"):
        small(str(path))  # a path given to the Predictor is read the same way
