"""Every numeric config key is range-checked at load time, naming the key (issue 17).

``solver.max_iter=0`` used to write an untrained ``model_final.pth`` that
``tools/infer.py`` then picked by default. Each key of the detector's and the
classifier's RANGES gets a value just outside its range and must be refused with a
one-line ConfigError that names it; the defaults and every shipped config pass.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from detectron_res.classification.config import RANGES as CLASSIFIER_RANGES
from detectron_res.classification.config import load_classifier_config
from detectron_res.config import RANGES, UNRANGED_NUMERIC_KEYS, ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def _outside(spec: str):
    """A value just outside a range written as in RANGES (independent of the checker's parser)."""
    spec = spec.strip()
    if spec.startswith(">="):
        return float(spec[2:]) - 1 if float(spec[2:]).is_integer() else float(spec[2:]) - 0.5
    if spec.startswith(">"):
        return float(spec[1:])
    low, high = (float(v) for v in spec[1:-1].split(","))
    return high + 1 if spec.endswith("]") else high  # "[0, 1)" refuses 1 itself


def _as_override(key: str, value, current) -> str:
    """``key=value``; a list key gets its default list with the first entry replaced."""
    if isinstance(value, float) and value.is_integer() and not isinstance(current, float):
        value = int(value)
    if isinstance(current, list):
        return f"{key}=[{', '.join(str(v) for v in [value, *current[1:]])}]"
    return f"{key}={value}"


def _cases(ranges, loader):
    from omegaconf import OmegaConf

    defaults = loader(None)
    for key, spec in ranges.items():
        current = OmegaConf.select(defaults, key)
        current = list(current) if OmegaConf.is_list(current) else current
        is_float = isinstance(current[0] if isinstance(current, list) and current else current, float)
        yield key, spec, current, is_float


def test_every_numeric_detector_key_has_a_range():
    """A key added to the schema without a range would again accept impossible values."""
    from omegaconf import OmegaConf

    def numeric_keys(node, prefix=""):
        for name in node:
            value, key = node[name], f"{prefix}{name}"
            if OmegaConf.is_dict(value):
                yield from numeric_keys(value, key + ".")
                continue
            # numeric by its default value (an empty list default, e.g. test.scales, is
            # not seen here: such keys are listed in RANGES by hand)
            entries = list(value) if OmegaConf.is_list(value) else [value]
            if any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in entries):
                yield key

    cfg = load_config(None)
    keys = set(numeric_keys(cfg))
    assert "test.scale_target_size" in keys and "solver.max_iter" in keys  # the walk sees the schema
    assert sorted(keys - set(RANGES) - set(UNRANGED_NUMERIC_KEYS)) == []


@pytest.mark.parametrize("key,spec,current,is_float", list(_cases(RANGES, load_config)), ids=list(RANGES))
def test_detector_key_out_of_range_is_refused(key, spec, current, is_float):
    value = _outside(spec)
    value = float(value) if is_float else int(value)
    override = _as_override(key, value, current)
    extra = ["solver.steps=[]"] if key.startswith("solver.max_iter") else []
    with pytest.raises(ConfigError, match=rf"^config key '{key}' (entries )?must be "):
        load_config(None, [override, *extra])


@pytest.mark.parametrize("key,spec,current,is_float", list(_cases(CLASSIFIER_RANGES, load_classifier_config)),
                         ids=list(CLASSIFIER_RANGES))
def test_classifier_key_out_of_range_is_refused(key, spec, current, is_float):
    value = _outside(spec)
    value = float(value) if is_float else int(value)
    override = _as_override(key, value, current)
    extra = ["solver.steps=[]"] if key.startswith("solver.max_iter") else []
    if key == "input.train_short_side":
        override = "input.train_short_side=[0,480]"
    with pytest.raises(ConfigError, match=rf"^config key '{key}' (entries )?must be "):
        load_classifier_config(None, [override, *extra])


def test_every_shipped_config_is_in_range():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        loader = load_classifier_config if path.name.startswith(("cifar10", "imagenet")) else load_config
        loader(path)


@pytest.mark.parametrize("override", ["solver.base_lr=.nan", "solver.gamma=.inf", "model.anchor.offset=-.inf"])
def test_non_finite_values_are_refused_everywhere(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"config key '{key}' must be a finite number"):
        load_config(None, [override])


def test_solver_orderings():
    with pytest.raises(ConfigError, match=r"'solver.steps' must be strictly increasing; got \[10, 10\]"):
        load_config(None, ["solver.steps=[10,10]", "solver.max_iter=100"])
    with pytest.raises(ConfigError, match=r"'solver.steps'=\[100\] has a step at or beyond solver.max_iter=100"):
        load_config(None, ["solver.steps=[100]", "solver.max_iter=100"])
    assert load_config(None, ["solver.steps=[99]", "solver.max_iter=100"]).solver.max_iter == 100
    with pytest.raises(ConfigError, match=r"'model.rpn.negative_iou' \(0.8\) must be <= 'model.rpn.positive_iou'"):
        load_config(None, ["model.rpn.negative_iou=0.8"])
    with pytest.raises(ConfigError, match=r"'model.pixel_std' must list 3 values"):
        load_config(None, ["model.pixel_std=[1,1]"])


def _tool(name, *args, cwd=ROOT):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "tools" / f"{name}.py"), *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)


def test_classifier_command_line_refuses_max_iter_zero(tmp_path):
    """The real command line: one line, exit 2, nothing written (the detector's is in the corpus)."""
    proc = _tool("train_classifier", "--config", "cifar10_resnet20.yaml", "--output-dir", tmp_path / "out",
                 "solver.max_iter=0")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["config error: config key 'solver.max_iter' must be >= 1; got 0"]
    assert not (tmp_path / "out").exists()
