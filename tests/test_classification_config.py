"""The classifier config schema, the configs/imagenet_*.yaml and cifar10_*.yaml files
against the paper's recipes (shared/PAPER_FACTS.md), and the config errors."""
import pytest
import torch

from detectron_res.classification.config import (
    classifier_config_from_dict,
    load_classifier_config,
)
from detectron_res.classification.model import build_classifier
from detectron_res.config import CONFIG_DIR, ConfigError, config_to_dict
from helpers import load_tool


def test_imagenet_configs_follow_sec_3_4():
    for depth in (18, 34, 50, 101, 152):
        cfg = load_classifier_config(f"imagenet_r{depth}.yaml")
        assert (cfg.model.arch, cfg.model.depth, cfg.model.residual) == ("resnet", depth, True)
        s, i = cfg.solver, cfg.input
        # Sec 3.4: batch 256, lr 0.1, momentum 0.9, weight decay 1e-4, up to 60e4 iterations.
        assert (s.ims_per_batch, s.base_lr, s.momentum, s.weight_decay, s.max_iter) == (256, 0.1, 0.9, 1e-4, 600000)
        assert list(i.train_short_side) == [256, 480] and i.crop_size == 224 and i.hflip and i.lighting_std > 0
        assert i.test_short_side == 256 and list(cfg.test.views) == ["center", "ten_crop"]
        assert cfg.model.dropout == 0.0 and cfg.model.norm == "BN"
        # The detection configs' defaults, so that --weights needs no change there.
        assert cfg.model.input_format == "BGR" and cfg.model.stride_in_1x1
    assert not load_classifier_config("imagenet_plain34.yaml").model.residual


def test_cifar_configs_follow_sec_4_2_and_table_6():
    # Table 6 parameter counts (M); plain nets have the same ones (option A shortcuts).
    table6 = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 1202: 19.4}
    for depth, params in table6.items():
        cfg = load_classifier_config(f"cifar10_resnet{depth}.yaml")
        assert (cfg.model.arch, cfg.model.depth, cfg.model.shortcut, cfg.model.residual) == (
            "cifar_resnet", depth, "A", True)
        s = cfg.solver
        assert (s.ims_per_batch, s.base_lr, list(s.steps), s.max_iter, s.weight_decay) == (
            128, 0.1, [32000, 48000], 64000, 1e-4)
        assert cfg.input.pad == 4 and cfg.input.crop_size == 32 and list(cfg.input.train_short_side) == []
        with torch.device("meta"):  # shapes only: ResNet-1202 builds in a blink
            n = sum(p.numel() for p in build_classifier(cfg).parameters())
            assert n / 1e6 == pytest.approx(params, abs=0.006 if params < 1 else 0.06), depth
            if depth <= 56:
                plain = load_classifier_config(f"cifar10_plain{depth}.yaml")
                assert not plain.model.residual and sum(p.numel() for p in build_classifier(plain).parameters()) == n
    warm = load_classifier_config("cifar10_resnet110.yaml").solver
    assert (warm.warmup_method, warm.warmup_iters, warm.warmup_factor) == ("constant", 400, 0.1)
    assert load_classifier_config("cifar10_resnet20.yaml").solver.warmup_iters == 0


def test_every_classifier_config_loads_and_round_trips():
    files = sorted(CONFIG_DIR.glob("imagenet_*.yaml")) + sorted(CONFIG_DIR.glob("cifar10_*.yaml"))
    assert len(files) >= 17
    for path in files:
        load_classifier_config(path)
    cfg = load_classifier_config("cifar10_resnet1202.yaml", ["model.dropout=0.2"])
    assert config_to_dict(classifier_config_from_dict(config_to_dict(cfg))) == config_to_dict(cfg)


def test_regularization_switches_are_config_keys():
    cfg = load_classifier_config("cifar10_resnet1202.yaml", ["model.dropout=0.5", "solver.weight_decay=5e-4"])
    assert cfg.model.dropout == 0.5 and cfg.solver.weight_decay == 5e-4


@pytest.mark.parametrize("overrides, message", [
    (["model.dpeth=5"], "unknown config key 'model.dpeth'; closest valid key: 'model.depth'"),
    (["model.depth=five"], "config key 'model.depth' expects int, got 'five'"),
    (["model.arch=alexnet"], "config key 'model.arch' must be one of resnet, cifar_resnet, vgg16; got 'alexnet'"),
    (["model.dropout=1.5"], "config key 'model.dropout' must be in [0, 1); got 1.5"),
    (["input.train_short_side=[300]"], "config key 'input.train_short_side' must be [] or [min, max]"),
    (["input.train_short_side=[100,200]"], "config key 'input.crop_size'=224 is larger than the smallest"),
    (["test.views=[center,multi]"], "config key 'test.views' entries must be one of center, ten_crop; got 'multi'"),
    (["data.format=cifar10", "data.test_split=val"], "config key 'data.test_split' must be 'test' or 'holdout'"),
    (["data.format=cifar10", "data.test_split=holdout"], "data.holdout=0: set data.holdout=5000"),
    (["solver.warmup_method=cosine"], "config key 'solver.warmup_method' must be one of linear, constant"),
])
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_classifier_config(None, overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_tool_config_mistakes_are_one_line_and_status_2(capsys):
    tool = load_tool("train_classifier")
    assert tool.main(["--config", "cifar10_resnet20.yaml", "solver.max_itr=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "closest valid key: 'solver.max_iter'" in err[0]
    assert tool.main(["--config", "cifar10_resnet20.yml"]) == 2
    assert "did you mean 'cifar10_resnet20.yaml'" in capsys.readouterr().err
    assert tool.main(["--config", "cifar10_resnet20.yaml", "--print-config", "model.depth=8"]) == 0
    assert "  depth: 8\n" in capsys.readouterr().out
