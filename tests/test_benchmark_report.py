"""The speed benchmark's reporting, apart from its measuring (``benchmarks/report.py``, ``targets.py``).

* ``benchmarks/RESULTS.md`` is what the report writer makes of the committed
  ``benchmarks/results_cpu.json``, byte for byte, through the command line's
  ``--report-only`` mode (which measures nothing), and the target rows stored in
  that JSON are what ``targets.evaluate_targets`` finds in its numbers again;
* the report and the targets import no torch: they read the results dict only;
* ``--report-only`` refuses a file that is not a results JSON with one line that
  names it.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(ROOT))  # the benchmarks package (not installed with detectron_res)

from benchmarks import run  # noqa: E402
from benchmarks.report import write_markdown  # noqa: E402
from benchmarks.targets import evaluate_targets  # noqa: E402


def test_committed_results_md_is_the_report_of_the_committed_json(tmp_path):
    results = json.loads((BENCHMARKS / "results_cpu.json").read_text())
    write_markdown(results, tmp_path / "RESULTS.md", "scaling_cpu.png")
    written = (tmp_path / "RESULTS.md").read_text()
    committed = (BENCHMARKS / "RESULTS.md").read_text()
    assert written.splitlines() == committed.splitlines()  # a readable diff first
    assert written == committed


def test_report_only_rewrites_results_md_and_the_plot(tmp_path, capsys):
    """The same through the command line, plot included (heavy: matplotlib)."""
    status = run.main(["--report-only", str(BENCHMARKS / "results_cpu.json"), "--out", str(tmp_path)])
    assert status == 0
    assert (tmp_path / "RESULTS.md").read_text() == (BENCHMARKS / "RESULTS.md").read_text()
    # The plot the report links to is drawn again beside it; no JSON is written.
    assert (tmp_path / "scaling_cpu.png").stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS.md", "scaling_cpu.png"]
    assert f"wrote {tmp_path / 'RESULTS.md'}, {tmp_path / 'scaling_cpu.png'}" in capsys.readouterr().out


def test_stored_targets_are_what_the_numbers_give():
    results = json.loads((BENCHMARKS / "results_cpu.json").read_text())
    assert results["targets"], "the committed run has target rows"
    assert evaluate_targets(results) == results["targets"]


def test_report_and_targets_import_no_torch():
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import benchmarks.report, benchmarks.targets, benchmarks.results; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'detectron_res')))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, check=True)
    # Only the package's torch-free atomic writer (the report files are written atomically).
    assert out.stdout.strip() == "['detectron_res', 'detectron_res.outputs']"


def test_report_only_refuses_what_is_not_a_results_json(tmp_path, capsys):
    not_json = tmp_path / "notes.json"
    not_json.write_text("{not json")
    assert run.main(["--report-only", str(not_json)]) == 2
    assert f"--report-only {not_json}: not JSON" in capsys.readouterr().err
    other = tmp_path / "metrics.json"
    other.write_text(json.dumps({"iteration": 5, "argv": []}))
    assert run.main(["--report-only", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"--report-only {other}: no date, quick, machine" in err and "written by benchmarks/run.py" in err
    assert not (tmp_path / "RESULTS.md").exists()
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--report-only", str(tmp_path / "missing.json")])
    assert exit_info.value.code == 2
    assert "missing.json: no such file" in capsys.readouterr().err
