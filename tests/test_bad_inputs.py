"""The bad-input corpus (tests/fixtures/bad/cases.yaml) run through the command-line tools.

Every case names a tool (train_net, visualize_data, infer, eval_coco, eval_voc), its
arguments and the exact expected behaviour: the exit status and either the one
line on stderr (naming the file, the line / annotation / key and what was
expected) or the counted skips in the summary. No case may print a traceback or
raise out of ``main``.

The tools run in this process through their ``main(argv)`` (a subprocess costs ~3 s
of imports per case); cases marked ``subprocess: true`` run the real command line
once to show that the in-process runs behave like it. They run in a temporary copy
of the corpus, completed by ``make_bad.py`` (the bomb image, checkpoints, weights).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import yaml
from helpers import load_module
from helpers import load_tool as _load_tool

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "fixtures" / "bad"
MANIFEST = yaml.safe_load((CORPUS / "cases.yaml").read_text())
CASES = MANIFEST["cases"]
TOOLS = ("train_net", "visualize_data", "infer", "eval_coco", "eval_voc", "export", "convert_weights")
# Where each tool is told to write (appended to the case's arguments).
OUTPUT_ARGS = {
    "train_net": ["--output-dir", "{out}"],
    "visualize_data": ["--out", "{out}"],
    "infer": ["--output", "{out}", "--device", "cpu", "-q"],
    "eval_coco": [],
    "eval_voc": [],
    "export": [],
    "convert_weights": [],
}


_PROGRESS_BAR = re.compile(r"\d+%\|")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A writable copy of the corpus plus its generated part."""
    root = tmp_path_factory.mktemp("bad") / "bad"
    shutil.copytree(CORPUS, root, ignore=shutil.ignore_patterns("generated", "__pycache__"))
    make_bad = load_module(CORPUS / "make_bad.py", "make_bad")
    make_bad.write_large(root, root)
    return root


@pytest.fixture(scope="module")
def tools():
    return {name: _load_tool(name) for name in TOOLS}


def _argv(case: dict, out: Path) -> list:
    # own_output: the case names the output itself (the output path is what it tests).
    args = [str(a) for a in case["args"]] + ([] if case.get("own_output") else OUTPUT_ARGS[case["tool"]])
    return [a.replace("{out}", str(out)) for a in args]


def _run_in_process(tool, argv, capsys):
    code, crash = None, None
    try:
        code = tool.main(argv)
    except SystemExit as e:  # argparse and config errors exit this way
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # what would reach the user as a traceback
        crash = traceback.format_exc()
    out, err = capsys.readouterr()
    return code, out, err, crash


def _run_subprocess(name, argv, root):
    env = dict(os.environ, DETECTRON_RES_DATASETS=str(root), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / f"{name}.py"), *argv], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr, None


def test_manifest_is_complete():
    """Every case is well-formed and the corpus covers what the issue lists."""
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    for c in CASES:
        assert c["tool"] in TOOLS, c["id"]
        assert isinstance(c["exit"], int) and c.get("what"), c["id"]
        assert ("stderr" in c) or ("stdout" in c), f"{c['id']}: no expected output"
        if c["exit"] != 0 and "stderr" in c:
            assert c.get("names"), f"{c['id']}: an error case must say which file / key its message names"
    covered = {c.get("covers") for c in CASES}
    assert set(MANIFEST["required"]) <= covered, sorted(set(MANIFEST["required"]) - covered)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input(case, corpus, tools, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DETECTRON_RES_DATASETS", str(corpus))
    monkeypatch.chdir(corpus)
    argv = _argv(case, tmp_path / "out")
    if case.get("subprocess"):
        code, out, err, crash = _run_subprocess(case["tool"], argv, corpus)
    else:
        code, out, err, crash = _run_in_process(tools[case["tool"]], argv, capsys)
    shown = f"\n--- exit {code}\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}"
    assert crash is None, f"an exception escaped main():\n{crash}{shown}"
    assert "Traceback" not in out + err, shown
    assert code == case["exit"], shown

    def pattern(text: str) -> re.Pattern:
        return re.compile(text.replace("{root}", re.escape(str(corpus))))

    if "stderr" in case:
        # Exactly these lines, in this order: nothing else reaches the user's terminal
        # (but tqdm's progress bars, which are not messages).
        lines = [line for line in err.strip().splitlines() if not _PROGRESS_BAR.search(line)]
        expected = case["stderr"]
        assert len(lines) == len(expected), shown
        for line, regex in zip(lines, expected):
            assert pattern(regex).fullmatch(line), f"{line!r}\n does not match\n{regex!r}{shown}"
        if case.get("names"):
            assert all(name in err for name in case["names"]), f"the message must name {case['names']}{shown}"
    else:
        assert not [line for line in err.strip().splitlines() if not _PROGRESS_BAR.search(line)], shown
    for regex in case.get("stdout", []):
        assert any(pattern(regex).search(line) for line in out.splitlines()), f"no stdout line matches {regex!r}{shown}"


def test_pixel_limit_is_a_config_key_and_can_be_raised(corpus, monkeypatch):
    """data.max_pixels defaults to the readers' limit, and a limit above Pillow's own
    (which Pillow enforces by itself at open) lets a genuinely huge image through."""
    from PIL import Image

    from detectron_res.config import load_config
    from detectron_res.data.image_io import DEFAULT_MAX_PIXELS, ImageReadError, read_image_size

    assert load_config(None).data.max_pixels == DEFAULT_MAX_PIXELS
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    bomb = corpus / "generated" / "bomb.png"
    with pytest.raises(ImageReadError, match=r"196000000 pixels exceeds max_pixels=178956970"):
        read_image_size(bomb)
    assert read_image_size(bomb, max_pixels=200_000_000) == (14000, 14000)  # header only: nothing decoded
    with pytest.raises(ImageReadError, match=r"14000x14000 = 196000000 pixels exceeds max_pixels=195999999"):
        read_image_size(bomb, max_pixels=195_999_999)
