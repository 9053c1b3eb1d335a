"""tools/train_net.py end to end, on tiny generated data and a tiny residual detector.

* resume: a run killed with SIGKILL at an arbitrary iteration and resumed ends
  with exactly the weights of an uninterrupted run;
* distributed: 2 gloo processes with a global batch of 4 give the losses and the
  weights of 1 process with a batch of 4;
* a diverging run stops on the non-finite loss and leaves a loadable checkpoint;
* fine-tuning a checkpoint on a dataset with another number of classes reports
  the re-initialized layers; --eval-only; SIGTERM; user errors.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detectron_res.engine.checkpoint import find_last_checkpoint, load_checkpoint
from two_ranks import signal_rank_one_and_wait, start_two_ranks
from helpers import load_tool, shapes_datasets_root

ROOT = Path(__file__).resolve().parent.parent
TRAIN_NET = str(ROOT / "tools" / "train_net.py")

# configs/tiny_shapes.yaml: the demo detector small enough for a few CPU iterations per second.
TINY_CONFIG = "tiny_shapes.yaml"


train_net = load_tool("train_net")


def main_in_process(args, data_root, monkeypatch, capsys):
    """Run tools/train_net.py's main() in this process (no interpreter start-up)."""
    monkeypatch.setenv("DETECTRON_RES_DATASETS", str(data_root))
    code = train_net.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return shapes_datasets_root(tmp_path_factory, num_train=16, num_val=4)


def shapes_args(out, *extra):
    return ["--config", TINY_CONFIG, "--output-dir", str(out), "--device", "cpu",
            "data.train=[shapes_train]", "data.test=[]", "test.best_metric=", *extra]


def final_weights(out):
    return load_checkpoint(Path(out) / "model_final.pth")["model"]


def assert_same_weights(a, b, **tol):
    assert a.keys() == b.keys()
    for k in a:
        if tol:
            torch.testing.assert_close(a[k], b[k], **tol, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


def test_sigkill_and_resume_gives_identical_weights(tmp_path, data_root, monkeypatch, capsys):
    common = ["solver.max_iter=12", "solver.checkpoint_period=2", "solver.ims_per_batch=2"]
    assert main_in_process(shapes_args(tmp_path / "ref", *common), data_root, monkeypatch, capsys)[0] == 0
    expected = final_weights(tmp_path / "ref")

    out = tmp_path / "killed"
    env = dict(os.environ, DETECTRON_RES_DATASETS=str(data_root), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, TRAIN_NET, *shapes_args(out, *common)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while not (out / "model_0000004.pth").exists():  # kill somewhere after 4 iterations
            assert proc.poll() is None, "training ended before the kill"
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model_final.pth").exists(), "the run finished before SIGKILL: the test did not interrupt it"
    killed_at = load_checkpoint(find_last_checkpoint(out))["iteration"]
    assert 1 <= killed_at < 11  # the pointer may still name the checkpoint before model_0000004

    code, stdout, _ = main_in_process(shapes_args(out, *common) + ["--resume"], data_root, monkeypatch, capsys)
    assert code == 0
    assert f"resumed from {out / f'model_{killed_at + 1:07d}.pth'} (after {killed_at + 1} iterations)" in stdout
    assert_same_weights(final_weights(out), expected)
    # the optimizer state too (momentum buffers)
    a = load_checkpoint(out / "model_final.pth")["optimizer"]["state"]
    b = load_checkpoint(tmp_path / "ref" / "model_final.pth")["optimizer"]["state"]
    assert all(torch.equal(a[i]["momentum_buffer"], b[i]["momentum_buffer"]) for i in a)


def make_aligned_dataset(root: Path, num_images=8):
    """128x128 images, one 32x32 object each, centred on a cell centre of the
    stride-16 anchor grid (also after a horizontal flip).

    Every image then has the same number of positive, negative and ignored anchors
    (no ties among best-matching anchors) and of proposals, while classes, colours,
    textures and places differ; so the
    per-image loss normalizers are equal and a batch split over processes must give
    exactly the single-process losses (see test_distributed_matches_single_process).
    """
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(num_images):
        img = rng.integers(40, 120, size=(128, 128, 3)).astype(np.uint8)
        x, y = (int(v) for v in rng.choice([24, 40, 56, 72], size=2))
        color = [int(c) for c in rng.integers(150, 256, size=3)]
        cv2.rectangle(img, (x, y), (x + 31, y + 31), color, thickness=-1)
        cv2.imwrite(str(root / "images" / f"{i}.png"), img)
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 128, "width": 128})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": int(rng.integers(1, 4)),
                     "bbox": [x, y, 32, 32], "area": 1024, "iscrowd": 0})
    cats = [{"id": c, "name": n} for c, n in ((1, "a"), (2, "b"), (3, "c"))]
    (root / "train.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


def test_distributed_matches_single_process(tmp_path, data_root, monkeypatch, capsys):
    make_aligned_dataset(tmp_path / "aligned")
    args = [
        "--config", TINY_CONFIG, "--device", "cpu",
        "model.roi_heads.num_classes=3",
        "data.datasets.aligned.format=coco",
        f"data.datasets.aligned.image_root={tmp_path / 'aligned' / 'images'}",
        f"data.datasets.aligned.annotation_file={tmp_path / 'aligned' / 'train.json'}",
        "data.train=[aligned]", "data.test=[]", "test.best_metric=",
        "input.min_size_train=[128]", "input.min_size_test=128",
        "model.anchor.sizes=[16,32]",
        # Take every anchor and every proposal: sampling then does not depend on the
        # random stream, which differs between 1 and 2 processes.
        "model.rpn.batch_size_per_image=100000", "model.rpn.positive_fraction=1.0",
        "model.rpn.nms_thresh=1.0", "model.rpn.min_size=0",
        "model.rpn.pre_nms_topk_train=50", "model.rpn.post_nms_topk_train=50",
        "model.roi_heads.batch_size_per_image=1000", "model.roi_heads.positive_fraction=1.0",
        "solver.ims_per_batch=4", "solver.max_iter=3", "solver.checkpoint_period=100", "solver.base_lr=0.02",
    ]
    assert main_in_process(args + ["--output-dir", str(tmp_path / "single")], data_root, monkeypatch, capsys)[0] == 0

    env = dict(os.environ, DETECTRON_RES_DATASETS=str(data_root), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", TRAIN_NET,
           *args, "--output-dir", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "processes: 2 (gloo)" in proc.stdout and "4 (2 per process)" in proc.stdout

    def losses(out):
        recs = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k.startswith("loss")} for r in recs if "loss_cls" in r]

    single, ddp = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert len(single) == len(ddp) == 3
    for a, b in zip(single, ddp):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), (k, single, ddp)
    assert_same_weights(final_weights(tmp_path / "ddp"), final_weights(tmp_path / "single"), rtol=1e-4, atol=1e-6)
    # only rank 0 wrote files: one log, one metrics file, one checkpoint set
    assert (tmp_path / "ddp" / "log.txt").is_file() and not list((tmp_path / "ddp").glob("log_rank*"))
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(p.name for p in (tmp_path / "single").iterdir())


def test_divergence_stops_with_message_and_loadable_checkpoint(tmp_path, data_root, monkeypatch, capsys):
    out = tmp_path / "nan"
    code, _, err = main_in_process(shapes_args(out, "solver.max_iter=30", "solver.checkpoint_period=1",
                                               "solver.base_lr=1e8", "solver.ims_per_batch=2"),
                                   data_root, monkeypatch, capsys)
    assert code == 3, err[-2000:]
    line = [ln for ln in err.splitlines() if ln.startswith("error: non-finite loss in iteration ")]
    assert line, err[-2000:]
    bad, total = map(int, line[0].split("iteration ")[1].split(":")[0].split("/"))
    assert total == 30
    it = bad - 1  # iterations done before the bad one (counted as the log's "iter: k/M")
    assert "loss_cls=" in line[0] and "loss_rpn_cls=" in line[0]
    assert not (out / "model_final.pth").exists()
    last = find_last_checkpoint(out)
    assert last is not None and last.name == f"model_{it:07d}.pth"  # after the `it` good iterations before it
    state = load_checkpoint(last)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_finetune_other_classes_reports_skipped_keys_then_eval_only(tmp_path, data_root, monkeypatch, capsys):
    src = tmp_path / "src"
    assert main_in_process(shapes_args(src, "solver.max_iter=2", "solver.ims_per_batch=2"), data_root, monkeypatch,
                           capsys)[0] == 0

    # the same images as a 2-class YOLO dataset (classes.txt replaced)
    yolo = data_root / "shapes" / "yolo"
    (tmp_path / "two.txt").write_text("circle\nsquare\n")
    labels = tmp_path / "yolo2"
    for split in ("train", "val"):
        (labels / split / "labels").mkdir(parents=True)
        (labels / split / "images").symlink_to(yolo / split / "images")
        for f in (yolo / split / "labels").glob("*.txt"):
            keep = [ln for ln in f.read_text().splitlines() if ln.split()[0] in ("0", "1")]
            (labels / split / "labels" / f.name).write_text("".join(k + "\n" for k in keep))
    common = [
        "model.roi_heads.num_classes=2",
        "data.datasets.two_train.format=yolo", f"data.datasets.two_train.yolo_root={labels / 'train'}",
        f"data.datasets.two_train.class_names_file={tmp_path / 'two.txt'}",
        "data.datasets.two_val.format=yolo", f"data.datasets.two_val.yolo_root={labels / 'val'}",
        f"data.datasets.two_val.class_names_file={tmp_path / 'two.txt'}",
    ]
    out = tmp_path / "ft"
    args = ["--config", TINY_CONFIG, "--output-dir", str(out), "--device", "cpu", *common,
            "data.train=[two_train]", "data.test=[two_val]", "solver.max_iter=2", "solver.ims_per_batch=2",
            "--weights", str(src / "model_final.pth")]
    code, stdout, err = main_in_process(args, data_root, monkeypatch, capsys)
    assert code == 0, err[-2000:]
    log = (out / "log.txt").read_text()
    for key in ("roi_heads.predictor.cls_score.weight", "roi_heads.predictor.cls_score.bias",
                "roi_heads.predictor.bbox_pred.weight", "roi_heads.predictor.bbox_pred.bias"):
        assert f"{key}: checkpoint" in log, key
    assert "skipped 4 with a different shape (re-initialized)" in log
    assert "init: detector checkpoint" in stdout and "4 re-initialized" in stdout
    # everything else came from the checkpoint
    ft = load_checkpoint(out / "model_final.pth")
    assert ft["class_names"] == ["circle", "square"] and ft["model"]["roi_heads.predictor.cls_score.weight"].shape[0] == 3
    # the final evaluation ran with both evaluators (default for YOLO: coco; demo config: voc + coco)
    evaluation = json.loads((out / "inference" / "two_val" / "evaluation.json").read_text())
    assert set(evaluation["two_val"]) == {"voc", "coco"}

    # --eval-only with the fine-tuned checkpoint
    ev = tmp_path / "ev"
    code, stdout, err = main_in_process(
        ["--config", TINY_CONFIG, "--output-dir", str(ev), "--device", "cpu", *common,
         "data.train=[two_train]", "data.test=[two_val]", "--eval-only", "--weights", str(out / "model_final.pth")],
        data_root, monkeypatch, capsys)
    assert code == 0, err[-2000:]
    assert "final evaluation: " in stdout and "voc/mAP50=" in stdout
    assert (ev / "inference" / "two_val" / "evaluation.json").is_file()
    # ... and one JSON line in metrics.json with the scalar metrics (issue: --eval-only writes metrics.json)
    record = json.loads((ev / "metrics.json").read_text().splitlines()[-1])
    assert record["eval_only"] is True and "voc/mAP50" in record and "coco/AP" in record


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_cleanly(tmp_path, data_root):
    out = tmp_path / "term"
    env = dict(os.environ, DETECTRON_RES_DATASETS=str(data_root), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, TRAIN_NET, *shapes_args(out, "solver.max_iter=10000",
                                                                     "solver.ims_per_batch=2")],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not (out / "metrics.json").exists() or not (out / "metrics.json").read_text():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 5, stderr[-2000:]  # EXIT_STOPPED_BY_SIGNAL
    assert "continue with: --resume" in stdout
    state = load_checkpoint(find_last_checkpoint(out))
    assert 0 <= state["iteration"] < 10000 and not (out / "model_final.pth").exists()


def test_user_errors_are_one_line(tmp_path, data_root, monkeypatch, capsys):
    code, _, err = main_in_process(shapes_args(tmp_path / "e1", "model.roi_heads.num_classes=7"), data_root,
                                   monkeypatch, capsys)
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "error: model.roi_heads.num_classes=7 but training dataset 'shapes_train' has 4 classes "
        "(circle, square, triangle, star); set model.roi_heads.num_classes=4")
    code, _, err = main_in_process(shapes_args(tmp_path / "e2", "--weights", str(tmp_path / "nope.pth")),
                                   data_root, monkeypatch, capsys)
    assert code == 2 and "nope.pth" in err.strip().splitlines()[-1]
    # A config mistake: the library raises ConfigError, the tool prints one line and returns 2.
    code, _, err = main_in_process(shapes_args(tmp_path / "e3", "solver.base_lr=oops"), data_root, monkeypatch, capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        "config error: command-line override 'solver.base_lr=oops': config key 'solver.base_lr' expects float, "
        "got 'oops' (str)"]
    # --eval-only without any checkpoint
    code, _, err = main_in_process(shapes_args(tmp_path / "e4", "--eval-only", "data.test=[shapes_val]"), data_root,
                                   monkeypatch, capsys)
    assert code == 2 and "--eval-only needs a trained detector" in err


@pytest.mark.slow
def test_dead_rank_makes_the_other_exit_with_clear_error(tmp_path, data_root):
    """Two processes joined by environment variables (as torchrun sets them, but
    without torchrun's agent, which would stop the survivor itself): rank 1 is
    killed; rank 0 must exit with status 4 and a one-line error, not hang."""
    out = tmp_path / "dead"
    procs = start_two_ranks(TRAIN_NET, shapes_args(out, "solver.max_iter=100000", "solver.ims_per_batch=2",
                                                   "dist.timeout_s=30"), data_root=data_root, cwd=ROOT)
    err, waited = signal_rank_one_and_wait(procs, out, signal.SIGKILL)
    assert procs[0].returncode == 4, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: rank 0/2:") and "another rank probably died or hung" in last, last
    assert "dist.timeout_s" in last and waited < 30 + 10  # within the configured timeout (+ process exit)
