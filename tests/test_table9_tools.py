"""Appendix B's options (Table 9) and flip testing through the tools: --eval-only (one
process and two), the Predictor and tools/infer.py, all from config overrides."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from detectron_res.data.shapes import generate_shapes_dataset
from helpers import load_module, load_tool, make_tiny_checkpoint, synthetic_image

ROOT = Path(__file__).resolve().parent.parent
TRAIN_NET = str(ROOT / "tools" / "train_net.py")
# tiny_shapes tests at 96 px: a pyramid around it, and every option on
OPTIONS = ["model.roi_heads.box_refinement=true", "test.scales=[64,96,128]", "test.scale_target_size=48",
           "test.hflip=true"]


train_net = load_tool("train_net", "train_net_table9")
infer = load_tool("infer", "infer_table9")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny_shapes detector with global context, trained 4 iterations, and its data; the
    training's final evaluation (the evaluation hook) runs with every test-time option."""
    root = tmp_path_factory.mktemp("table9")
    generate_shapes_dataset(str(root / "datasets" / "shapes"), num_train=8, num_val=6, image_size=(64, 96), seed=5)
    args = ["--config", "tiny_shapes.yaml", "--output-dir", str(root / "train"), "--device", "cpu",
            "data.train=[shapes_train]", "data.test=[shapes_val]", "test.evaluators=[coco]", "test.best_metric=",
            "solver.max_iter=4", "solver.ims_per_batch=2", "model.roi_heads.global_context=true", *OPTIONS]
    with pytest.MonkeyPatch.context() as patch:  # this module's tests read the data from here
        patch.setenv("DETECTRON_RES_DATASETS", str(root / "datasets"))
        assert train_net.main(args) == 0
        evaluation = json.loads((root / "train" / "inference" / "shapes_val" / "evaluation.json").read_text())
        assert "coco" in evaluation["shapes_val"]
        yield root


def _eval_only_args(root, out, *extra):
    return ["--config", "tiny_shapes.yaml", "--output-dir", str(out), "--device", "cpu", "--eval-only",
            "--weights", str(root / "train" / "model_final.pth"), "data.test=[shapes_val]",
            "test.evaluators=[coco]", "model.roi_heads.global_context=true",
            "model.roi_heads.score_thresh_test=0.0001", *extra]  # 4 iterations: low scores


def _metrics(out):
    return json.loads((Path(out) / "metrics.json").read_text().splitlines()[-1])


def test_eval_only_with_every_option(trained, capsys):
    plain, options = trained / "plain", trained / "options"
    assert train_net.main(_eval_only_args(trained, plain)) == 0
    assert train_net.main(_eval_only_args(trained, options, *OPTIONS)) == 0
    out = capsys.readouterr().out
    assert out.count("final evaluation: ") == 2
    a, b = _metrics(plain), _metrics(options)
    assert a["eval_only"] and b["eval_only"] and "coco/AP" in a and "coco/AP" in b
    # the options changed the detections (a different results file), not just the log
    results = [json.loads((d / "inference" / "shapes_val" / "coco_instances_results.json").read_text())
               for d in (plain, options)]
    assert len(results[0]) > 0 and results[0] != results[1]


@pytest.mark.slow
def test_distributed_eval_only_with_every_option_matches_one_process(trained, capsys):
    single = trained / "single"
    assert train_net.main(_eval_only_args(trained, single, *OPTIONS)) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", TRAIN_NET,
           *_eval_only_args(trained, trained / "ddp", *OPTIONS)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # each rank ran half of the 6 images (FrozenBN: per-image results do not depend on the split)
    assert "| 3/3 " in proc.stderr and "/6 " not in proc.stderr, proc.stderr[-2000:]  # rank 0's bar: 3 images
    a, b = _metrics(single), _metrics(trained / "ddp")
    metrics = [k for k in a if k.startswith("coco/")]
    assert metrics and all(b[k] == pytest.approx(a[k], abs=1e-6, nan_ok=True) for k in metrics), (a, b)

    def detections(out):
        records = json.loads((out / "inference" / "shapes_val" / "coco_instances_results.json").read_text())
        return sorted((r["image_id"], r["category_id"], round(r["score"], 5), *[round(v, 2) for v in r["bbox"]])
                      for r in records)

    ours, theirs = detections(single), detections(trained / "ddp")
    assert len(ours) > 0 and ours == theirs


def test_predictor_and_infer_take_the_options_as_overrides(tmp_path, capsys):
    from detectron_res.predictor import Predictor

    checkpoint = make_tiny_checkpoint(tmp_path / "model_final.pth")
    image = synthetic_image(90, 120, seed=1)
    cv2.imwrite(str(tmp_path / "photo.png"), image)
    overrides = ["model.roi_heads.box_refinement=true", "test.scales=[48,64,96]", "test.hflip=true"]
    predictor = Predictor(checkpoint, device="cpu", score_thresh=0.05, overrides=overrides)
    assert predictor.model.test_time_options == ("model.roi_heads.box_refinement", "test.scales", "test.hflip")
    plain = Predictor(checkpoint, device="cpu", score_thresh=0.05)(image)
    got = predictor(image)
    assert len(got) > 0 and (len(got) != len(plain) or not np.allclose(got.boxes, plain.boxes))

    code = infer.main([str(tmp_path / "photo.png"), "--weights", str(checkpoint), "--output", str(tmp_path / "out"),
                       "--score-thresh", "0.05", "--device", "cpu", *overrides])
    assert code == 0, capsys.readouterr().err[-2000:]
    record = json.loads((tmp_path / "out" / "photo_png.json").read_text())
    assert len(record["detections"]) == len(got)
    np.testing.assert_allclose([d["box"] for d in record["detections"]], got.boxes, atol=2e-3)
    np.testing.assert_allclose([d["score"] for d in record["detections"]], got.scores, atol=2e-6)


def test_cost_benchmark_runs_every_variant(trained, tmp_path, capsys):
    bench = load_module(ROOT / "benchmarks" / "table9_cost.py", "table9_cost")
    weights = str(trained / "train" / "model_final.pth")
    assert bench.main(["--weights", weights, "--scales", "64,96,128", "--target-size", "48", "--repeats", "1",
                       "--context-weights", weights, "--context-baseline", weights,
                       "--json", str(tmp_path / "cost.json")]) == 0
    out = capsys.readouterr().out
    for variant in ("| plain |", "| + box refinement |", "| + flip |", "| + multi-scale |",
                    "| + refinement + flip + multi-scale |", "| + context (trained) |"):
        assert variant in out, out
    rows = json.loads((tmp_path / "cost.json").read_text())["rows"]
    assert len(rows) == 7 and all(r["cpu_s_per_image"] > 0 for r in rows)
    assert rows[1]["overrides"] == ["model.roi_heads.box_refinement=true"]
