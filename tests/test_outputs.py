"""detectron_res/outputs.py and the tools' output rules (issue 17, data loss).

* the atomic write gives files the umask's permissions (mkstemp alone gives 0600)
  and never leaves a partial file under the final name;
* an output that is an input (same path, symbolic link, hard link, a file in an
  input folder) is refused even with --overwrite; an existing file only with it;
* every writing tool, through its main(), refuses to replace a file it did not
  create in this run without --overwrite, and does replace it with --overwrite;
* training into a folder that holds a run needs --resume or --overwrite.

tools/infer.py and tools/export.py have their own tests (test_infer.py,
test_export.py); the one-line messages of each class are in the bad-input corpus
(tests/fixtures/bad/cases.yaml).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from detectron_res.outputs import (
    OutputError,
    atomic_write_text,
    check_output_dir,
    check_output_file,
    check_run_dir,
    previous_run_files,
)
from helpers import load_tool as _load_tool
from helpers import shapes_datasets_root

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def umask():
    """Set the process umask for one test (restored after)."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(saved)


# ----------------------------------------------------------------------------
# The helper
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_respects_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    path = atomic_write_text(tmp_path / "a.json", "{}\n")
    assert path.stat().st_mode & 0o777 == mode
    # Replacing a file keeps that file's permissions (a user's chmod survives).
    os.chmod(path, 0o600)
    atomic_write_text(path, "{} \n")
    assert path.stat().st_mode & 0o777 == 0o600 and path.read_text() == "{} \n"


def test_the_package_writers_respect_the_umask(tmp_path, umask):
    """The four former copies of write-then-rename: checkpoints, config.yaml, JSON, comp4."""
    from detectron_res.config import load_config, save_config
    from detectron_res.engine.checkpoint import save_checkpoint
    from detectron_res.evaluation.report import write_json

    umask(0o022)
    save_checkpoint({"format_version": 1, "model": {"w": torch.zeros(2)}, "iteration": 0}, tmp_path / "m.pth")
    save_config(load_config(None, []), tmp_path / "config.yaml")
    write_json(tmp_path / "evaluation.json", {"AP": 1.0})
    for name in ("m.pth", "config.yaml", "evaluation.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "evaluation.json", "m.pth"]  # no temporaries


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    from detectron_res.outputs import atomic_write

    path = atomic_write_text(tmp_path / "a.txt", "old\n")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_an_input_is_refused_however_it_is_named(tmp_path, monkeypatch):
    src = tmp_path / "w.pth"
    src.write_bytes(b"weights")
    (tmp_path / "link.pth").symlink_to(src)
    os.link(src, tmp_path / "hard.pth")
    monkeypatch.chdir(tmp_path)
    for name in ("w.pth", str(src), "./sub/../w.pth", "link.pth", "hard.pth"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(OutputError, match="is also an input"):
            check_output_file(name, inputs=[src], overwrite=True, flag="--output")
    # A file inside an input folder is an input; a new file there is fine.
    with pytest.raises(OutputError, match="is inside the input folder"):
        check_output_file(src, inputs=[tmp_path], overwrite=True)
    assert check_output_file(tmp_path / "new.json", inputs=[tmp_path]) == tmp_path / "new.json"
    # Names that are not files (torchvision://...) and None are ignored.
    assert check_output_file(tmp_path / "x.pth", inputs=[None, "torchvision://resnet50"]) == tmp_path / "x.pth"
    assert src.read_bytes() == b"weights"


def test_existing_files_and_wrong_kinds(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "d").mkdir()
    with pytest.raises(OutputError, match=r"^--json .*a\.json already exists; pass --overwrite"):
        check_output_file(tmp_path / "a.json", flag="--json")
    check_output_file(tmp_path / "a.json", overwrite=True)
    with pytest.raises(OutputError, match="is a folder, expected a file name"):
        check_output_file(tmp_path / "d", overwrite=True)
    with pytest.raises(OutputError, match=r"a\.json is a file, expected a folder to write into"):
        check_output_file(tmp_path / "a.json" / "b.json")
    with pytest.raises(OutputError, match=r"^--out .*a\.json is a file, expected a folder"):
        check_output_dir(tmp_path / "a.json", flag="--out")
    with pytest.raises(OutputError, match=r"a\.json already exists \(and 1 more of the files this run writes\)"):
        check_output_dir(tmp_path, files=["a.json", "new.png", "d/../a.json"], flag="--out")


def test_what_counts_as_a_previous_run(tmp_path):
    run = tmp_path / "run"
    assert previous_run_files(run) == [] and check_run_dir(run, resume=False, overwrite=False) == run
    run.mkdir()
    (run / "config.yaml").write_text("x: 1\n")
    (run / "log.txt").write_text("a log\n")
    (run / "metrics.json").write_text("")  # empty: nothing to lose
    assert previous_run_files(run) == []
    (run / "metrics.json").write_text('{"iteration": 0}\n')  # a run stopped before its first checkpoint
    assert previous_run_files(run) == ["metrics.json"]
    (run / "model_0000009.pth").write_bytes(b"")
    (run / "last_checkpoint").write_text("model_0000009.pth")
    assert previous_run_files(run) == ["last_checkpoint", "model_0000009.pth", "metrics.json"]
    with pytest.raises(OutputError, match=r"holds a previous run .*--resume.*--overwrite.*--output-dir$"):
        check_run_dir(run, resume=False, overwrite=False)
    check_run_dir(run, resume=True, overwrite=False)
    check_run_dir(run, resume=False, overwrite=True, inputs=[("--weights", None), ("model.weights", "msra://R-50")])
    # --overwrite would delete the checkpoint the new run starts from: refused.
    with pytest.raises(OutputError, match=r"^--weights .*model_0000009\.pth is a checkpoint of the previous run"):
        check_run_dir(run, resume=False, overwrite=True, inputs=[("--weights", str(run / "model_0000009.pth"))])


# ----------------------------------------------------------------------------
# Every writing tool: no replacement without --overwrite, replacement with it
# ----------------------------------------------------------------------------
CORPUS = ROOT / "tests" / "fixtures" / "bad"


def _refused_then_replaced(run, path: Path, capsys) -> None:
    """``run(extra_args)`` refuses (exit 2, one line naming ``path``, file intact)
    without --overwrite and replaces the file with it."""
    path.write_text("mine\n")
    code = run([])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(path) in err and "--overwrite" in err, err
    assert path.read_text() == "mine\n"
    assert run(["--overwrite"]) == 0, capsys.readouterr().err
    assert path.read_bytes() != b"mine\n"
    capsys.readouterr()


def test_eval_coco_and_eval_voc_json_and_pack(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(CORPUS)
    coco, voc = _load_tool("eval_coco"), _load_tool("eval_voc")
    out = tmp_path / "coco.json"
    _refused_then_replaced(
        lambda extra: coco.main(["--gt", "coco/ok.json", "--results", "results/ok.json", "--json", str(out), *extra]),
        out, capsys)
    assert "AP" in json.loads(out.read_text())
    voc_args = ["--voc-root", "voc/VOC2007", "--split", "ok", "--classes", "cat,dog", "--results-dir",
                "results/voc_ok"]
    out = tmp_path / "voc.json"
    _refused_then_replaced(lambda extra: voc.main([*voc_args, "--json", str(out), *extra]), out, capsys)
    pack = tmp_path / "voc.tar.gz"
    _refused_then_replaced(lambda extra: voc.main([*voc_args, "--pack", str(pack), *extra]), pack, capsys)


def test_convert_weights(tmp_path, capsys):
    import torchvision

    src = tmp_path / "r18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), src)
    tool = _load_tool("convert_weights")
    dst = tmp_path / "r18_converted.pth"
    args = [str(src), str(dst), "--from", "torchvision", "--arch", "resnet18"]
    _refused_then_replaced(lambda extra: tool.main([*args, *extra]), dst, capsys)
    before = src.read_bytes()
    assert tool.main([str(src), str(src), "--from", "torchvision", "--arch", "resnet18", "--overwrite"]) == 2
    assert "is also an input" in capsys.readouterr().err and src.read_bytes() == before


def test_plot_curves_and_reproduce_tables(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("".join(json.dumps({"iteration": i, "train_error": 50.0 - i}) + "\n"
                                              for i in range(1, 4)))
    plot = _load_tool("plot_curves")
    _refused_then_replaced(lambda extra: plot.main([str(run), *extra]), run / "curves.png", capsys)
    summary = tmp_path / "summary.json"
    _refused_then_replaced(lambda extra: plot.main([str(run), "--out", str(tmp_path / "c.png"), "--summary",
                                                    str(summary), *extra]), summary, capsys)
    # the run's own metrics.json is an input, even with --overwrite
    assert plot.main([str(run), "--out", str(run / "metrics.json"), "--overwrite"]) == 2
    assert "is also an input" in capsys.readouterr().err
    tables = _load_tool("reproduce_tables")
    md = tmp_path / "tables.md"
    _refused_then_replaced(lambda extra: tables.main(["--markdown", str(md), *extra]), md, capsys)


def test_visualize_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(CORPUS)
    monkeypatch.setenv("DETECTRON_RES_DATASETS", str(CORPUS))
    tool = _load_tool("visualize_data")
    out = tmp_path / "vis"
    assert tool.main(["--config", "coco.yaml", "--out", str(out), "--num", "1"]) == 0
    capsys.readouterr()
    _refused_then_replaced(lambda extra: tool.main(["--config", "coco.yaml", "--out", str(out), "--num", "1",
                                                    *extra]), out / "000_1.png", capsys)


def test_fault_inject_json_and_work_dir(tmp_path, capsys):
    import fault_inject as tool  # tests/fault_inject.py

    report = tmp_path / "report.json"
    report.write_text("mine\n")
    assert tool.main(["--json", str(report), "--kills", "1"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err and report.read_text() == "mine\n"
    work = tmp_path / "work"
    (work / "run").mkdir(parents=True)
    assert tool.main(["--work-dir", str(work), "--kills", "1"]) == 2
    assert "holds run/ (an earlier run?); pass --overwrite" in capsys.readouterr().err and (work / "run").is_dir()


def test_demo_and_train_classifier_refuse_a_finished_run(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last_checkpoint").write_text("model_final.pth")
    (run / "model_final.pth").write_text("a trained model\n")
    assert _load_tool("demo").main(["--output-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"error: {run} holds a previous run (last_checkpoint, model_final.pth); continue it with --resume, or start "
        "over with --overwrite (replaces it) or another --output-dir"]
    code = _load_tool("train_classifier").main(["--config", str(ROOT / "configs" / "cifar10_resnet20.yaml"),
                                                "--output-dir", str(run)])
    assert code == 2 and "holds a previous run" in capsys.readouterr().err
    assert (run / "model_final.pth").read_text() == "a trained model\n"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return shapes_datasets_root(tmp_path_factory, num_train=8, num_val=2)


def test_train_net_finished_run_resume_overwrite_and_eval_only(tmp_path, data_root, monkeypatch, capsys):
    """A finished run is refused without --resume; --resume continues (nothing to do);
    --overwrite starts over and deletes the old checkpoints; --eval-only does not
    replace an evaluation without --overwrite."""
    monkeypatch.setenv("DETECTRON_RES_DATASETS", str(data_root))
    tool = _load_tool("train_net")
    out = tmp_path / "run"
    args = ["--config", "tiny_shapes.yaml", "--output-dir", str(out), "--device", "cpu", "data.train=[shapes_train]",
            "data.test=[]", "test.best_metric=", "solver.ims_per_batch=2", "solver.max_iter=2",
            "solver.checkpoint_period=1"]
    assert tool.main(args) == 0
    capsys.readouterr()
    final = (out / "model_final.pth").read_bytes()
    metrics = (out / "metrics.json").read_text()
    assert (out / "model_0000001.pth").is_file()

    assert tool.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {out} holds a previous run (last_checkpoint, model_final.pth, model_0000001.pth and 1 "
                   "more); continue it with --resume, or start over with --overwrite (replaces it) or another "
                   "--output-dir"]
    assert (out / "model_final.pth").read_bytes() == final and (out / "metrics.json").read_text() == metrics

    assert tool.main(args + ["--resume"]) == 0  # already finished: continues from iteration 2, trains nothing
    capsys.readouterr()
    assert (out / "metrics.json").read_text().startswith(metrics.splitlines()[0])

    # --overwrite with another period: the old model_0000001.pth does not survive into the new run.
    assert tool.main(args[:-1] + ["solver.checkpoint_period=1000", "--overwrite"]) == 0
    capsys.readouterr()
    assert not (out / "model_0000001.pth").exists() and (out / "model_final.pth").is_file()

    evaluation = out / "inference" / "shapes_val" / "evaluation.json"
    eval_args = [*args[:6], "--eval-only", "--weights", str(out / "model_final.pth"), "data.test=[shapes_val]",
                 "test.evaluators=[voc]"]
    assert tool.main(eval_args) == 0 and evaluation.is_file()
    capsys.readouterr()
    _refused_then_replaced(lambda extra: tool.main([*eval_args, *extra]), evaluation, capsys)


def test_export_without_onnx_says_which_extra(tmp_path, monkeypatch, capsys):
    """No onnx package: one line naming the extra to install, before the checkpoint is read."""
    tool = _load_tool("export")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    assert tool.main(["--weights", str(tmp_path / "missing.pth"), "--format", "onnx"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --format onnx needs the onnx package(s), not installed; install the export extra: "
        "pip install -e '.[export]' (or pip install onnx onnxruntime onnxscript)")


def test_figures_are_written_atomically(tmp_path):
    """A plot redrawn over an earlier one (training curves, PR curves) either replaces it
    whole or leaves it as it was: a draw that fails leaves the old PNG and no temporary."""
    from matplotlib.figure import Figure

    from detectron_res.engine.events import save_figure

    out = tmp_path / "plots" / "curves.png"
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    assert save_figure(fig, out) == out
    first = out.read_bytes()
    assert first.startswith(b"\x89PNG")

    class BrokenFigure(Figure):
        def savefig(self, f, **kwargs):
            f.write(b"\x89PNG half")
            raise OSError("disk full while drawing")

    with pytest.raises(OSError, match="disk full while drawing"):
        save_figure(BrokenFigure(), out)
    assert out.read_bytes() == first
    assert sorted(p.name for p in out.parent.iterdir()) == ["curves.png"]
