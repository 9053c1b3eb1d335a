"""tools/reproduce_tables.py on fabricated run directories."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
import yaml

from detectron_res.evaluation.paper_tables import PAPER_TABLE7, PAPER_TABLE8, collect_runs, format_tables
from detectron_res.evaluation.report import write_metrics
from helpers import load_tool

ROOT = Path(__file__).resolve().parent.parent


def make_run(root: Path, name: str, *, backbone: str, depth: int = 101, test, train, metrics=None, lines=None,
             evaluation=None):
    run = root / name
    run.mkdir(parents=True)
    cfg = {"model": {"backbone": {"name": backbone, "depth": depth}}, "data": {"train": train, "test": test},
           "output_dir": str(run)}  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    if metrics is not None:
        write_metrics(metrics, run)
    if evaluation is not None:  # what tools/train_net.py's evaluation writes
        write_metrics(evaluation, run / "inference" / test[0], filename="evaluation.json")
    if lines is not None:  # a training log: JSON lines with flat keys
        (run / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in lines) + "{broken\n")
    return run


def run_tool(argv):
    tool = load_tool("reproduce_tables")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = tool.main(argv)
    return rc, out.getvalue(), err.getvalue()


def row(text: str, title_prefix: str, method: str) -> str:
    """The line of ``method`` in the table whose title starts with ``title_prefix``."""
    block = text[text.index(title_prefix):]
    return next(line for line in block.splitlines() if line.startswith(method))


@pytest.fixture
def runs(tmp_path):
    voc0712 = ["voc_2007_trainval", "voc_2012_trainval"]
    make_run(tmp_path, "r101_voc07", backbone="resnet", test=["voc_2007_test"], train=voc0712,
             lines=[{"iteration": 79999, "voc/mAP50": 75.0}],  # older than the evaluation file
             evaluation={"voc_2007_test": {"voc": {"mAP50": 75.94, "mAP50_95": 44.0, "per_class": {"cat": 80.0}}}})
    make_run(tmp_path, "vgg_voc07", backbone="vgg16", test=["voc_2007_test"], train=["voc_2007_trainval"],
             lines=[{"iteration": 999, "voc/mAP50": 60.0, "loss_cls": 0.3},
                    {"iteration": 1999, "loss_cls": 0.2},
                    {"iteration": 2999, "voc/mAP50": 73.46}])
    make_run(tmp_path, "r101_voc12", backbone="resnet", test=["voc_2012_test"],
             train=["voc_2007_trainval", "voc_2007_test", "voc_2012_trainval"],
             evaluation={"voc_2012_test": {"voc": {"submission": "inference/voc_2012_test/voc2012_test_submission.tar.gz",
                                                  "num_detections": 9}}})
    (tmp_path / "r101_voc12" / "inference" / "voc_2012_test" / "voc2012_test_submission.tar.gz").write_bytes(b"")
    make_run(tmp_path, "r101_coco", backbone="resnet", test=["coco_2014_val"], train=["coco_2014_train"],
             evaluation={"coco_2014_val": {"coco": {"AP": 26.84, "AP50": 47.91, "APs": None}}})
    make_run(tmp_path, "r50_coco", backbone="resnet", depth=50, test=["coco_2014_val"], train=["coco_2014_train"],
             metrics={"coco_2014_val": {"coco": {"AP": 20.0, "AP50": 40.0}}})  # fmt: skip
    return tmp_path


def test_tables_from_run_dirs(runs):
    rc, out, err = run_tool([str(p) for p in sorted(runs.iterdir())] + ["--markdown", str(runs / "tables.md")])
    assert rc == 0, err
    r101 = row(out, "Table 7", "ResNet-101")
    assert re.search(r"ResNet-101\s+75\.9\s+76\.4\s+-0\.5\s+server \[1\]\s+73\.8$", r101), r101
    vgg = row(out, "Table 7", "VGG-16")
    assert re.search(r"VGG-16\s+73\.5\s+73\.2\s+\+0\.3\s+not run\s+70\.4$", vgg), vgg  # last record wins
    coco = row(out, "Table 8", "ResNet-101")
    assert re.search(r"ResNet-101\s+47\.9\s+48\.4\s+-0\.5\s+26\.8\s+27\.2\s+-0\.4$", coco), coco
    assert re.search(r"VGG-16\s+not run\s+41\.5\s+not run\s+21\.2$", row(out, "Table 8", "VGG-16"))
    # the submission archive, resolved against its run directory
    archive = runs / "r101_voc12" / "inference" / "voc_2012_test" / "voc2012_test_submission.tar.gz"
    assert f"[1] ResNet-101 VOC 12 test: upload {archive} to" in out
    assert "ignored" in out and "r50_coco: backbone resnet-50 is not in Tables 7/8" in out
    assert "VGG-16 voc07: trained on voc_2007_trainval; the paper trains on" in out
    md = (runs / "tables.md").read_text()
    assert "| method | VOC 07 test (train 07+12): ours | VOC 07 test (train 07+12): paper |" in md
    assert "| ResNet-101 | 47.9 | 48.4 | -0.5 | 26.8 | 27.2 | -0.4 |" in md


def test_explicit_slots_server_results_and_errors(runs, tmp_path):
    bare = tmp_path / "bare_vgg_coco"
    bare.mkdir()
    write_metrics({"coco": {"AP": 21.0, "AP50": 41.9}}, bare)  # no config.yaml, single test set
    rc, out, _ = run_tool([str(runs / "r101_voc12"), "--run", f"vgg16-coco={bare}", "--server-result", "resnet101=73.1"])
    assert rc == 0
    assert re.search(r"VGG-16\s+41\.9\s+41\.5\s+\+0\.4\s+21\.0\s+21\.2\s+-0\.2$", row(out, "Table 8", "VGG-16"))
    assert re.search(r"73\.1 \(server\)\s+73\.8\s+-0\.7$", row(out, "Table 7", "ResNet-101"))
    # the same slot twice
    other = tmp_path / "copy"
    other.mkdir()
    (other / "config.yaml").write_text((runs / "r101_voc07" / "config.yaml").read_text())
    rc, _, err = run_tool([str(runs / "r101_voc07"), str(other)])
    assert rc == 2 and "two runs for resnet101-voc07" in err
    rc, _, err = run_tool(["--run", "resnet152-voc07=x"])
    assert rc == 2 and "run slot 'resnet152-voc07' is not valid" in err
    rc, _, err = run_tool([str(tmp_path / "nope")])
    assert rc == 2 and "does not exist" in err


def test_empty_tables_show_paper_values():
    text = format_tables({})
    for (b, t), v in PAPER_TABLE7.items():
        assert f"{v:.1f}" in text
    for v50, v in PAPER_TABLE8.values():
        assert f"{v50:.1f}" in text and f"{v:.1f}" in text
    assert text.count("not run") == 16  # Tables 7 and 8: 8 cells; Table 9: 4 rows x 2
    runs, notes = collect_runs([])
    assert runs == {} and notes == []


def test_table9_rows_from_the_runs_options(tmp_path):
    """Appendix B's options place a ResNet-101 COCO run in its Table 9 row; the baseline
    is Table 8's run; other combinations are ignored with the reason."""
    coco = {"coco_2014_val": {"coco": {"AP": 28.0, "AP50": 49.0}}}

    def run(name, refine=False, context=False, scales=(), hflip=False, depth=101):
        path = make_run(tmp_path, name, backbone="resnet", depth=depth, test=["coco_2014_val"],
                        train=["coco_2014_train"], evaluation=coco)
        cfg = yaml.safe_load((path / "config.yaml").read_text())
        cfg["model"]["roi_heads"] = {"box_refinement": refine, "global_context": context}
        cfg["test"] = {"scales": list(scales), "hflip": hflip}
        (path / "config.yaml").write_text(yaml.safe_dump(cfg))
        return path

    dirs = [run("base"), run("box", refine=True), run("ctx", refine=True, context=True),
            run("ms", refine=True, context=True, scales=[200, 400, 600, 800, 1000], hflip=True),
            run("ctx_only", context=True), run("r50_box", refine=True, depth=50)]
    rc, out, err = run_tool([str(d) for d in dirs])
    assert rc == 0, err
    t9 = out[out.index("Table 9"):]
    assert re.search(r"baseline\s+49\.0\s+48\.4\s+\+0\.6\s+28\.0\s+27\.2\s+\+0\.8$", row(t9, "Table 9", "baseline"))
    assert re.search(r"\+ box refinement\s+49\.0\s+49\.9\s+-0\.9\s+28\.0\s+29\.9\s+-1\.9$",
                     row(t9, "Table 9", "+ box refinement"))
    assert re.search(r"\+ context\s+49\.0\s+51\.1\s+-2\.1\s+28\.0\s+30\.0", row(t9, "Table 9", "+ context"))
    assert re.search(r"\+ multi-scale testing\s+49\.0\s+53\.8\s+-4\.8\s+28\.0\s+32\.5",
                     row(t9, "Table 9", "+ multi-scale testing"))
    # Table 8 still shows the baseline run only
    assert re.search(r"ResNet-101\s+49\.0\s+48\.4", row(out, "Table 8", "ResNet-101"))
    assert f"ignored {tmp_path / 'ctx_only'}: global_context on a ResNet-101 run is no row of Table 9" in out
    assert f"ignored {tmp_path / 'r50_box'}: backbone resnet-50" in out
    assert "tested with test.hflip" in out and "ResNet-101 + multi-scale testing: " in out
    rc, _, err = run_tool(["--run", "resnet101-coco+ms=" + str(dirs[3])])
    assert rc == 0
