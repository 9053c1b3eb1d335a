"""Parameter and multiply-add counting (detectron_res/analysis.py, tools/analyze_model.py).

References: Table 1 of the ResNet paper (multiply-adds at 224x224), PAPER_FACTS'
torchvision v1.5 figure (4.1e9 for ResNet-50) and VGG-16 (15.3e9), hand-computed
convolution costs, and torchvision's parameter counts.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from detectron_res.analysis import count_macs, count_parameters, default_stages
from detectron_res.modeling.backbone import VGG16, ResNet
from helpers import load_tool

ROOT = Path(__file__).resolve().parent.parent


def meta_classifier(depth, stride_in_1x1=True):
    # The meta device propagates shapes only: the counter sees every op, nothing is computed.
    with torch.device("meta"):
        model = ResNet(depth, stride_in_1x1=stride_in_1x1, num_classes=1000).eval()
        image = torch.empty(1, 3, 224, 224)
    return model, image


@pytest.mark.parametrize("depth,table1", [(18, 1.8e9), (34, 3.6e9), (50, 3.8e9), (101, 7.6e9), (152, 11.3e9)])
def test_msra_resnet_multiply_adds_match_table1(depth, table1):
    model, image = meta_classifier(depth)
    macs = count_macs(model, image)
    assert abs(macs["total"] - table1) / table1 < 0.03, macs["total"]


def test_torchvision_layout_costs_more():
    # PAPER_FACTS: stride on the 3x3 costs about 4.1e9 for ResNet-50.
    model, image = meta_classifier(50, stride_in_1x1=False)
    assert abs(count_macs(model, image)["total"] - 4.1e9) / 4.1e9 < 0.03


def test_vgg16_multiply_adds():
    with torch.device("meta"):
        model = VGG16(num_classes=1000).eval()
        image = torch.empty(1, 3, 224, 224)
    assert abs(count_macs(model, image)["total"] - 15.3e9) / 15.3e9 < 0.03  # Sec 3.3: 15.3 billion


def test_per_stage_counts_by_hand():
    model, image = meta_classifier(50)
    macs = count_macs(model, image)
    # conv1: 7x7x3 per output value, 64 channels on a 112x112 map.
    assert macs["stem"] == 7 * 7 * 3 * 64 * 112 * 112
    # fc: 2048 x 1000.
    assert macs["fc"] == 2048 * 1000
    # res5 of the MSRA layout on a 14x14 input: block 0 (1x1/2 1024->512, 3x3 512->512,
    # 1x1 512->2048, projection 1x1/2 1024->2048) and two blocks (2048->512, 3x3, 512->2048), on 7x7.
    hw = 7 * 7
    block0 = (1024 * 512 + 9 * 512 * 512 + 512 * 2048 + 1024 * 2048) * hw
    block = (2048 * 512 + 9 * 512 * 512 + 512 * 2048) * hw
    assert macs["res5"] == block0 + 2 * block
    stage_sum = sum(v for k, v in macs.items() if k != "total")
    assert stage_sum == macs["total"]


def test_parameter_counts_per_stage_and_trainable():
    with torch.device("meta"):
        model = ResNet(50, num_classes=1000, norm="BN")
        frozen = ResNet(50, num_classes=1000, freeze_at=2, norm="BN")
    params = count_parameters(model)
    assert params["total"] == 25_557_032  # torchvision's resnet50
    assert params["fc"] == 2048 * 1000 + 1000
    assert params["stem"] == 7 * 7 * 3 * 64 + 2 * 64
    assert count_parameters(model, trainable_only=True) == params
    trainable = count_parameters(frozen, trainable_only=True)
    assert trainable["stem"] == 0 and trainable["res2"] == 0
    assert trainable["res3"] == params["res3"]
    # freeze_at=2: stem and res2 convs frozen, their BN turned into FrozenBN buffers.
    assert trainable["total"] == params["total"] - params["stem"] - params["res2"]


def test_default_stages_split_a_backbone_child():
    detector = nn.Module()
    detector.backbone = ResNet(18, out_features=["res4"], base_channels=16)
    detector.head = nn.Conv2d(64, 8, 1)
    assert default_stages(detector) == [
        "backbone.stem", "backbone.res2", "backbone.res3", "backbone.res4", "head"]

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.head = detector.backbone, detector.head

        def forward(self, x):
            y = self.head(self.backbone(x)["res4"])
            return y @ torch.ones(y.shape[-1], 3)  # work outside every stage: "other"

    x = torch.randn(1, 3, 64, 64)
    macs = count_macs(Wrapper(), x)
    assert macs["head"] == 64 * 8 * 4 * 4
    assert macs["other"] == 8 * 4 * 4 * 3
    assert macs["total"] == sum(v for k, v in macs.items() if k != "total")
    with pytest.raises(ValueError, match="neck"):
        count_macs(Wrapper(), x, stages=["neck"])


def test_analyze_model_tool_bare_backbone(capsys):
    # As a user runs it: stdout must be exactly one JSON object.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "analyze_model.py"), "--arch", "resnet18", "--mode", "msra", "--json"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["params"] == 11_689_512
    assert abs(report["macs"] - 1.8e9) / 1.8e9 < 0.03
    assert report["input_size"] == [224, 224] and "res5" in report["stages"]

    main = load_tool("analyze_model").main
    assert main(["--arch", "cifar_resnet56", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert round(report["params"] / 1e6, 2) == 0.85  # Table 6
    assert main(["--arch", "resnet34", "--plain"]) == 0
    assert "plain-34" in capsys.readouterr().out


def test_analyze_model_tool_detector_config(capsys):
    main = load_tool("analyze_model").main

    overrides = [
        "model.backbone.depth=18", "model.backbone.base_channels=32", "model.rpn.post_nms_topk_test=12",
        "model.rpn.pre_nms_topk_test=100",
    ]
    assert main(["--config", "voc07_r101.yaml", *overrides, "--input-size", "96", "128", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"params", "macs", "stages"} <= set(report)
    assert report["input_size"] == [96, 128]
    assert "backbone.res4" in report["stages"] and "roi_heads" in report["stages"]
    # The per-region res5 head really ran on the RPN's proposals.
    assert 0 < report["rois"] <= 12 and report["stages"]["roi_heads"]["macs"] > 0

    from detectron_res.config import load_config
    from detectron_res.modeling.build import build_model

    model = build_model(load_config("voc07_r101.yaml", overrides))
    assert report["params"] == sum(p.numel() for p in model.parameters())
    assert report["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
