"""Every reader of a user file is bounded (detectron_res/bounded_io.py, issue 17).

A ~1 KB config of nested YAML aliases, nesting past the recursion limit, an XML
entity bomb, or an endless file must each end in one line, well under a second, at
every entry point: the detector and classifier configs and overrides, COCO json
(dataset and ``eval_coco --gt``), results json, VOC XML (dataset and ``eval_voc``),
a YOLO ``data.yaml``, the metrics files the plotting tools read. The command-line
cases live in the bad-input corpus (tests/fixtures/bad/cases.yaml); here: the time
limit, the classifier's command line, and each reader's refusal.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from detectron_res.bounded_io import (
    CONFIG_LIMITS,
    BoundedInputError,
    Limits,
    load_json_file,
    load_yaml_file,
    load_yaml_text,
    parse_xml_file,
    read_text,
)
from detectron_res.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
BAD = ROOT / "tests" / "fixtures" / "bad"
# Every refusal here takes milliseconds to ~0.2 s on a quiet machine (README); the
# bound leaves room for a loaded test machine and still fails on any real expansion.
FAST = 1.5


def _laughs(levels: int = 9, width: int = 9, key: str = "model:\n  pixel_mean") -> str:
    lines = ["a: &a [" + ", ".join(["lol"] * width) + "]"]
    prev = "a"
    for i in range(1, levels):
        name = f"l{i}"
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * width) + "]")
        prev = name
    return "\n".join(lines) + f"\n{key}: *{prev}\n"


@pytest.mark.timeout(60)  # a hang fails here; no wall-clock assertion (the machine may be loaded)
def test_alias_bomb_is_refused(tmp_path):
    text = _laughs()
    assert len(text) < 1100  # ~1 KB that expands to 9^9 values
    path = tmp_path / "laughs.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"laughs\.yaml: expands to more than 100000 values through YAML aliases"):
        load_config(path)


def test_aliases_that_stay_small_are_fine(tmp_path):
    """Anchors are ordinary YAML: sharing a value a few times is not refused."""
    path = tmp_path / "anchors.yaml"
    path.write_text("x: &mean [1.0, 2.0, 3.0]\nmodel:\n  pixel_mean: *mean\n  pixel_std: [1, 1, 1]\n")
    with pytest.raises(ConfigError, match="unknown config key 'x'"):  # the schema, not the limit, objects
        load_config(path)
    assert load_yaml_file(path)["model"]["pixel_mean"] == [1.0, 2.0, 3.0]


def test_cyclic_alias_meets_the_depth_limit():
    with pytest.raises(BoundedInputError, match=r"nested more than 32 levels deep through YAML aliases"):
        load_yaml_text("a: &a [*a]\n", CONFIG_LIMITS, "cycle.yaml")


@pytest.mark.timeout(60)  # a hang fails here; no wall-clock assertion (the machine may be loaded)
@pytest.mark.parametrize("depth", [33, 5000, 200_000])
def test_deep_yaml_never_reaches_the_recursion_limit(depth):
    with pytest.raises(BoundedInputError, match=r"nested more than 32 levels deep \(line 1\)"):
        load_yaml_text("[" * depth + "]" * depth, Limits(10**7, 32, 100_000, "configs"), "deep")


def test_size_limit_is_checked_before_reading(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(2 * 1024 * 1024)  # sparse: 2 MiB of zeros, nothing to read
    with pytest.raises(ConfigError, match=r"big\.yaml: 2\.0 MiB, larger than the 1\.0 MiB accepted for configs"):
        load_config(big)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_an_endless_stream_is_cut_at_the_limit(tmp_path):
    """/dev/zero reports size 0: reading stops at max_bytes + 1 instead of filling memory."""
    with pytest.raises(BoundedInputError, match="more than the 1.0 KiB accepted"):
        read_text("/dev/zero", Limits(1024, 4, 10, "tests"))


@pytest.mark.timeout(60)  # a hang fails here; no wall-clock assertion (the machine may be loaded)
def test_json_depth_and_recursion_limit(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    limits = Limits(10**7, 64, 0, "annotation files")
    with pytest.raises(BoundedInputError, match=r"deep\.json: nested more than 64 levels deep"):
        load_json_file(path, limits)
    path.write_text(json.dumps({"images": [[[[1]]]]}))
    assert load_json_file(path, limits) == {"images": [[[[1]]]]}


def test_json_long_integer_is_one_line(tmp_path):
    path = tmp_path / "digits.json"
    path.write_text("[" + "9" * 5000 + "]")
    with pytest.raises(BoundedInputError, match=r"digits\.json: invalid JSON \(Exceeds the limit"):
        load_json_file(path, Limits(10**7, 64, 0, "results files"))


@pytest.mark.timeout(60)  # a hang fails here; no wall-clock assertion (the machine may be loaded)
def test_xml_depth_is_checked_while_parsing(tmp_path):
    path = tmp_path / "deep.xml"
    path.write_bytes(b"<a>" * 2_000_000 + b"</a>" * 2_000_000)  # 14 MB
    with pytest.raises(BoundedInputError, match=r"elements nested more than 32 levels deep"):
        parse_xml_file(path)


def test_not_utf8_names_the_byte_and_offset(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("solver:\n  base_lr: 0.01  # d\xe9faut\n".encode("latin-1"))  # the é is byte 28
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text \(byte 0xe9 at offset 28\)"):
        load_config(path)
    path.write_bytes(b"\xef\xbb\xbfsolver:\n  base_lr: 0.01\n")  # a BOM is fine
    assert load_config(path).solver.base_lr == 0.01


def test_every_reader_refuses(tmp_path):
    """One bounded reader behind each entry point: each refuses its own bomb with one line."""
    from detectron_res.data.coco import validate_coco_json
    from detectron_res.data.dataset import DatasetError, ErrorCollector
    from detectron_res.data.voc import parse_voc_xml
    from detectron_res.data.yolo import read_class_names_file
    from detectron_res.engine.events import read_metrics_json
    from detectron_res.evaluation.coco import load_coco_gt
    from detectron_res.evaluation.paper_tables import identify_run, read_metrics_records
    from detectron_res.evaluation.voc import parse_voc_annotation

    laughs = tmp_path / "data.yaml"
    laughs.write_text(_laughs(key="names"))
    with pytest.raises(DatasetError, match="expands to more than 100000 values"):
        read_class_names_file(str(laughs))

    deep_json = tmp_path / "deep.json"
    deep_json.write_text('{"images": ' + "[" * 3000 + "]" * 3000 + "}")
    with pytest.raises(DatasetError, match="nested more than 64 levels deep"):
        validate_coco_json(str(deep_json), name="deep")
    with pytest.raises(ValueError, match="nested more than 64 levels deep"):
        load_coco_gt(deep_json)
    with pytest.raises(BoundedInputError, match="nested more than 64 levels deep"):
        read_metrics_records(deep_json)
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"iteration": 1}\n' + "[" * 3000 + "]" * 3000 + '\n{"iteration": 2}\n')
    assert [r["iteration"] for r in read_metrics_json(metrics)] == [1, 2]  # the deep line is skipped

    deep_xml = tmp_path / "deep.xml"
    deep_xml.write_text("<annotation>" + "<x>" * 50 + "</x>" * 50 + "</annotation>")
    errors = ErrorCollector("voc")
    parse_voc_xml(str(deep_xml), errors)
    assert "elements nested more than 32 levels deep" in str(errors.errors)
    with pytest.raises(ValueError, match="elements nested more than 32 levels deep"):
        parse_voc_annotation(deep_xml)

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(_laughs())
    with pytest.raises(ValueError, match="expands to more than 100000 values"):
        identify_run(run)


def _tool(name, *args, cwd=ROOT, timeout=120):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "tools" / f"{name}.py"), *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_classifier_command_line_refuses_alias_bomb_and_deep_override(tmp_path):
    """The classifier's config goes through the same loader (one subprocess: the real command line)."""
    path = tmp_path / "laughs.yaml"
    path.write_text(_laughs())
    proc = _tool("train_classifier", "--config", path, "--output-dir", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"config error: {path}: expands to more than 100000 values through YAML aliases (&anchor / *alias), "
        "the limit for configs"
    ]
    assert not (tmp_path / "out").exists()


def test_deep_override_is_one_line_not_a_recursion_error():
    with pytest.raises(ConfigError, match=r"nested more than 32 levels deep"):
        load_config(None, ["model.pixel_mean=" + "[" * 5000 + "]" * 5000])
    with pytest.raises(ConfigError, match=r"key has 3001 parts"):
        load_config(None, ["model" + ".a" * 3000 + "=1"])


def test_safe_loader_still_refuses_python_tags():
    with pytest.raises(yaml.YAMLError):
        load_yaml_text("a: !!python/object/apply:os.system ['true']\n", CONFIG_LIMITS, "x")


def test_checkpoint_config_sharing_one_list_is_bounded(tmp_path):
    """A checkpoint's stored config is another user file: a pickle can share one list
    many times over (memo references), like YAML aliases; OmegaConf would expand it."""
    import torch

    from detectron_res.config import config_from_dict
    from detectron_res.engine.checkpoint import read_checkpoint_file

    shared = [1.0] * 10
    for _ in range(8):
        shared = [shared] * 10  # 10^9 values, a few hundred bytes on disk
    path = tmp_path / "ckpt.pth"
    torch.save({"config": {"model": {"pixel_mean": shared}}}, path)
    assert path.stat().st_size < 10_000
    data = read_checkpoint_file(path)["config"]
    with pytest.raises(ConfigError, match=r"checkpoint: (expands to more than 100000 values|nested more than)"):
        config_from_dict(data)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.timeout(60)  # waiting for a writer would hang here
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "annotations.json"
    os.mkfifo(fifo)
    with pytest.raises(BoundedInputError, match=r"annotations\.json: is a pipe or socket, expected a results file"):
        load_json_file(fifo, Limits(1024, 4, 0, "results files"))
