"""The config system: schema, _base_ inheritance, overrides, and every error message."""
import argparse
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from detectron_res.config import (
    CONFIG_DIR,
    Config,
    ConfigError,
    ModelConfig,
    add_config_arguments,
    apply_overrides,
    config_from_args,
    config_from_dict,
    config_to_dict,
    load_config,
    resolve_config_path,
    save_config,
    typed_config,
)
from detectron_res.exit_status import EXIT_OK, EXIT_USER_ERROR, config_for_tool


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_are_the_papers_voc_values():
    cfg = load_config()
    assert list(cfg.model.anchor.sizes) == [128, 256, 512]
    assert cfg.model.rpn.pre_nms_topk_train == 12000 and cfg.model.rpn.post_nms_topk_test == 300
    assert cfg.model.roi_heads.nms_thresh_test == 0.3
    assert list(cfg.model.roi_heads.box_reg_weights) == [10, 10, 5, 5]
    assert list(cfg.input.min_size_train) == [600] and cfg.input.max_size_test == 1000


def test_base_inheritance_and_overrides(tmp_path):
    write(tmp_path, "base.yaml", "model:\n  backbone:\n    depth: 50\nsolver:\n  base_lr: 0.01\n")
    child = write(tmp_path, "child.yaml", "_base_: base.yaml\nsolver:\n  base_lr: 0.02\n")
    cfg = load_config(child, ["solver.max_iter=10", "solver.steps=[8]", "input.min_size_train=[480, 600]"])
    assert cfg.model.backbone.depth == 50  # from the base
    assert cfg.solver.base_lr == 0.02  # the child wins over its base
    assert cfg.solver.max_iter == 10  # the override wins over both
    assert list(cfg.input.min_size_train) == [480, 600]


def test_bare_name_finds_configs_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the project root: the package's configs/ must still be found
    some = sorted(CONFIG_DIR.glob("*.yaml"))
    if not some:
        pytest.skip("no config files yet")
    assert resolve_config_path(some[0].name) == some[0].resolve()
    assert resolve_config_path(some[0].stem) == some[0].resolve()


def test_user_datasets_are_typed():
    cfg = load_config(None, ["data.datasets.mine.format=yolo", "data.datasets.mine.yolo_root=/data/mine"])
    assert cfg.data.datasets.mine.yolo_root == "/data/mine"
    assert cfg.data.datasets.mine.class_names_file == ""


def test_round_trip_through_dict_and_yaml(tmp_path):
    cfg = load_config(None, ["model.backbone.depth=18", "data.datasets.x.format=coco"])
    again = config_from_dict(config_to_dict(cfg))
    assert config_to_dict(again) == config_to_dict(cfg)
    save_config(cfg, tmp_path / "out" / "config.yaml")
    reloaded = load_config(tmp_path / "out" / "config.yaml")
    assert config_to_dict(reloaded) == config_to_dict(cfg)


@pytest.mark.parametrize(
    "file_text, overrides, expected",
    [
        # unknown key in a file: file, full dotted path, closest valid key
        ("model:\n  backbone:\n    depht: 50\n", [], r"bad\.yaml: unknown config key 'model\.backbone\.depht'; closest valid key: 'model\.backbone\.depth'"),
        # unknown key in an override
        ("", ["solver.bas_lr=0.1"], r"command-line override 'solver\.bas_lr=0\.1': unknown config key 'solver\.bas_lr'; closest valid key: 'solver\.base_lr'"),
        ("", ["data.datasets.x.format=coco", "data.datasets.x.anotation_file=a.json"], r"closest valid key: 'data\.datasets\.x\.annotation_file'"),
        # wrong type: expected vs got
        ("solver:\n  max_iter: ten\n", [], r"bad\.yaml: config key 'solver\.max_iter' expects int, got 'ten' \(str\)"),
        ("", ["input.min_size_train=600"], r"config key 'input\.min_size_train' expects List\[int\], got 600 \(int\)"),
        # malformed YAML: file and line
        ("model:\n  backbone:\n    depth: [1,\n", [], r"bad\.yaml:4:1: malformed YAML"),
        # an invalid choice names the key and the valid names
        ("model:\n  backbone:\n    norm: batchnorm\n", [], r"'model\.backbone\.norm' must be one of FrozenBN, BN, SyncBN, GN; got 'batchnorm'"),
        ("", ["solver.max_iter"], r"expected section\.key=value"),
    ],
)
def test_config_errors(tmp_path, file_text, overrides, expected):
    path = write(tmp_path, "bad.yaml", file_text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(path, overrides)
    assert "\n" not in str(info.value)


def test_missing_base_and_nested_base(tmp_path):
    missing = write(tmp_path, "a.yaml", "_base_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: _base_ file 'nowhere\.yaml' not found"):
        load_config(missing)
    write(tmp_path, "grand.yaml", "seed: 1\n")
    write(tmp_path, "parent.yaml", "_base_: grand.yaml\n")
    child = write(tmp_path, "child.yaml", "_base_: parent.yaml\n")
    with pytest.raises(ConfigError, match=r"parent\.yaml: a _base_ file may not have its own _base_"):
        load_config(child)


def test_missing_config_file_suggests_a_name():
    with pytest.raises(ConfigError, match=r"config file 'no_such_config\.yaml' not found"):
        load_config("no_such_config.yaml")


def test_command_line_error_is_one_line_without_traceback(tmp_path):
    """Tools print 'config error: ...' and exit 2; --print-config prints YAML and exits 0."""
    script = textwrap.dedent(
        """
        import argparse, sys
        from detectron_res.config import add_config_arguments
        from detectron_res.exit_status import config_for_tool
        parser = argparse.ArgumentParser()
        add_config_arguments(parser)
        cfg, status = config_for_tool(parser.parse_args())
        sys.exit(status)
        """
    )
    good = write(tmp_path, "good.yaml", "seed: 3\n")
    bad = subprocess.run(
        [sys.executable, "-c", script, "--config", str(good), "model.backbone.dpth=5"],
        capture_output=True, text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "Traceback" not in bad.stderr
    assert "unknown config key 'model.backbone.dpth'" in bad.stderr
    shown = subprocess.run(
        [sys.executable, "-c", script, "--config", str(good), "--print-config"], capture_output=True, text=True
    )
    assert shown.returncode == 0 and "seed: 3" in shown.stdout


# ----------------------------------------------------------------------------- apply_overrides
def test_apply_overrides_is_the_command_line_on_a_loaded_config(tmp_path):
    path = write(tmp_path, "run.yaml", "model:\n  backbone:\n    depth: 50\nsolver:\n  base_lr: 0.01\n")
    cfg = load_config(path)
    overrides = ["solver.base_lr=0.002", "input.min_size_train=[480, 600]", "model.roi_heads.pooler_type=ROIAlign"]
    new = apply_overrides(cfg, overrides)
    assert new.solver.base_lr == 0.002 and list(new.input.min_size_train) == [480, 600]
    assert new.model.roi_heads.pooler_type == "ROIAlign"
    assert new.model.backbone.depth == 50  # untouched keys keep the loaded value
    assert cfg.solver.base_lr == 0.01 and list(cfg.input.min_size_train) == [600]  # the input is left as it is
    assert config_to_dict(new) == config_to_dict(load_config(path, overrides))
    # A config from plain containers (a checkpoint's, OmegaConf.create) is typed by the schema first.
    untyped = apply_overrides(OmegaConf.create(config_to_dict(cfg)), ["solver.max_iter=70000"])
    assert OmegaConf.get_type(untyped) is Config and untyped.solver.max_iter == 70000
    same = apply_overrides(cfg, [])
    assert same is not cfg and config_to_dict(same) == config_to_dict(cfg)


@pytest.mark.parametrize(
    "override, expected",
    [
        # an unknown key: named in full, with the closest valid key
        ("model.rpn.nms_tresh=0.5", r"^command-line override 'model\.rpn\.nms_tresh=0\.5': unknown config key "
                                    r"'model\.rpn\.nms_tresh'; closest valid key: 'model\.rpn\.nms_thresh'$"),
        # a value of the wrong type: the expected type and the value received
        ("solver.max_iter=many", r"^command-line override 'solver\.max_iter=many': config key 'solver\.max_iter' "
                                 r"expects int, got 'many' \(str\)$"),
        ("input.min_size_train=600", r"config key 'input\.min_size_train' expects List\[int\], got 600 \(int\)$"),
        # the checks after the schema: choices and ranges
        ("model.backbone.norm=batchnorm", r"'model\.backbone\.norm' must be one of FrozenBN, BN, SyncBN, GN"),
        ("solver.max_iter=0", r"^config key 'solver\.max_iter' must be >= 1; got 0$"),
        ("solver.max_iter", r"expected section\.key=value"),
    ],
)
def test_apply_overrides_errors_are_the_command_lines(override, expected):
    cfg = load_config(None, ["solver.steps=[]"])
    with pytest.raises(ConfigError, match=expected) as info:
        apply_overrides(cfg, [override])
    with pytest.raises(ConfigError) as on_command_line:
        load_config(None, ["solver.steps=[]", override])
    assert str(info.value) == str(on_command_line.value)


# ----------------------------------------------------------------------------- config_from_args
def _parse(argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser.parse_args(argv)


def test_config_from_args_raises_config_error_and_prints_nothing(tmp_path, capsys):
    good = write(tmp_path, "good.yaml", "seed: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.backbone\.dpth'; closest valid key: "
                                          r"'model\.backbone\.depth'"):
        config_from_args(_parse(["--config", str(good), "model.backbone.dpth=5"]))
    with pytest.raises(ConfigError, match=r"config file 'nowhere\.yaml' not found"):
        config_from_args(_parse(["--config", "nowhere.yaml"]))
    cfg = config_from_args(_parse(["--config", str(good), "--print-config", "solver.max_iter=90000"]))
    assert cfg.seed == 3 and cfg.solver.max_iter == 90000
    assert capsys.readouterr() == ("", "")  # --print-config is the tool's to act on


def test_config_for_tool_maps_config_errors_to_status_2(tmp_path, capsys):
    good = write(tmp_path, "good.yaml", "seed: 3\n")
    cfg, status = config_for_tool(_parse(["--config", str(good), "seed=4"]))
    assert status == EXIT_OK and cfg.seed == 4
    assert config_for_tool(_parse(["--config", str(good), "sed=4"])) == (None, EXIT_USER_ERROR)
    out, err = capsys.readouterr()
    assert out == "" and err == "config error: command-line override 'sed=4': unknown config key 'sed'; closest valid key: 'seed'\n"
    assert config_for_tool(_parse(["--config", str(good), "--print-config"])) == (None, EXIT_OK)
    out, err = capsys.readouterr()
    assert err == "" and config_to_dict(load_config(write(tmp_path, "printed.yaml", out))) == config_to_dict(load_config(good))


# ----------------------------------------------------------------------------- typed_config
def test_typed_config_gives_the_schema_dataclasses_with_their_types():
    typed = typed_config(load_config(None, ["model.anchor.offset=0", "test.scales=[400, 600]"]))
    assert isinstance(typed, Config) and isinstance(typed.model, ModelConfig)
    assert typed.model.anchor.offset == 0.0 and type(typed.model.anchor.offset) is float  # an int in the YAML
    assert type(typed.test.scales) is list and typed.test.scales == [400, 600]
    assert type(typed.model.backbone.depth) is int and type(typed.model.speed.channels_last) is bool
    assert typed_config(typed) is typed
    bad = config_to_dict(load_config(None))
    bad["model"]["rpn"]["pre_nms_topk_test"] = "many"
    with pytest.raises(ConfigError, match=r"config key 'model\.rpn\.pre_nms_topk_test' expects int, got 'many'"):
        typed_config(OmegaConf.create(bad))
