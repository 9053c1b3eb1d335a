"""The configs in configs/: paper facts they encode, and one training iteration each.

Every paper config is loaded as written, checked against the ResNet paper's
protocol (shared/PAPER_FACTS.md: Table 7, Table 8, Appendix A), built, and trained
for one iteration on the demo data with its dataset names (and, for speed, its
input size and batch) overridden. Its ImageNet weights name is resolved through
the weight import; for ResNet-50 a synthetic MSRA file goes all the way into the
detector.
"""
import math
import pickle

import numpy as np
import pytest
import torch

from detectron_res.config import CONFIG_DIR, load_config
from detectron_res.data.shapes import generate_shapes_dataset
from detectron_res.detection.task import (
    check_label_space,
    initialize_weights,
    load_train_dataset,
    make_train_loader,
)
from detectron_res.engine.solver import build_optimizer_and_scheduler
from detectron_res.engine.trainer import Trainer
from detectron_res.modeling.build import build_model
from detectron_res.weights import key_table, resolve_weights_uri

# name -> (backbone arch of its ImageNet weights, protocol)
PAPER_CONFIGS = {
    "coco_r101.yaml": ("resnet101", "coco"),
    "coco_r101_lr_summed.yaml": ("resnet101", "coco"),
    "coco_r50.yaml": ("resnet50", "coco"),
    "coco_vgg16.yaml": ("vgg16", "coco"),
    "voc07_r101.yaml": ("resnet101", "voc07"),
    "voc07_vgg16.yaml": ("vgg16", "voc07"),
    "voc12_r101.yaml": ("resnet101", "voc12"),
    "voc12_vgg16.yaml": ("vgg16", "voc12"),
    # Table 9 (Appendix B): the Table 8 ResNet-101 protocol plus its improvements
    "coco_r101_table9_box.yaml": ("resnet101", "coco"),
    "coco_r101_table9_ctx.yaml": ("resnet101", "coco"),
    "coco_r101_table9.yaml": ("resnet101", "coco"),
}
OTHER_CONFIGS = {"base_coco.yaml", "base_voc.yaml", "demo_shapes.yaml", "finetune_custom.yaml", "tiny_shapes.yaml",
                 "coco_r50_c4_d2_1x.yaml"}


def test_every_detection_config_is_covered():
    # cifar10_* and imagenet_* are the classification configs (their own schema and tests)
    detection = {p.name for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith(("cifar10_", "imagenet_"))}
    assert detection == set(PAPER_CONFIGS) | OTHER_CONFIGS
    for name in OTHER_CONFIGS:
        load_config(name)  # loads without error


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_paper_protocol(name):
    arch, protocol = PAPER_CONFIGS[name]
    cfg = load_config(name)
    text = (CONFIG_DIR / name).read_text()
    assert "Table 8" in text if protocol == "coco" else "Table 7" in text  # cites the table it reproduces
    # Appendix A: single scale 600 / max 1000 in training and testing, 300 proposals at test time
    assert list(cfg.input.min_size_train) == [600] and cfg.input.max_size_train == 1000
    if list(cfg.test.scales):  # Table 9's multi-scale testing: the input is its largest level, proposals at 600
        assert cfg.input.min_size_test == max(cfg.test.scales) == 1000 and cfg.input.max_size_test == 1667
        assert cfg.test.proposal_scale == 600
    else:
        assert cfg.input.min_size_test == 600 and cfg.input.max_size_test == 1000
    assert cfg.model.rpn.post_nms_topk_test == 300
    if protocol == "coco":
        assert list(cfg.data.train) == ["coco_2014_train"] and list(cfg.data.test) == ["coco_2014_val"]
        assert cfg.model.roi_heads.num_classes == 80
        # Appendix A: 240k iterations at 0.001, 80k at 0.0001, 8 GPUs (1 image each);
        # gradients averaged over the 8 GPUs (Caffe) or summed (x 8), stated in the file
        summed = name == "coco_r101_lr_summed.yaml"
        assert cfg.solver.base_lr == (8 * 0.001 if summed else 0.001)
        reading = "lr reading: gradients averaged" if not summed else "GRADIENTS SUMMED"
        assert reading in text or reading in (CONFIG_DIR / "base_coco.yaml").read_text()
        assert list(cfg.solver.steps) == [240000] and cfg.solver.gamma == 0.1
        assert cfg.solver.max_iter == 320000 and cfg.solver.ims_per_batch == 8
        assert 64 in cfg.model.anchor.sizes
    else:
        train = ["voc_2007_trainval", "voc_2012_trainval"]  # 07+12
        test = ["voc_2007_test"]
        if protocol == "voc12":
            train = ["voc_2007_trainval", "voc_2007_test", "voc_2012_trainval"]  # 07++12
            test = ["voc_2012_test"]
        assert list(cfg.data.train) == train and list(cfg.data.test) == test
        assert cfg.model.roi_heads.num_classes == 20
        assert cfg.test.voc_year == ("2007" if protocol == "voc07" else "2012")
        # Faster R-CNN VOC hyper-parameters
        assert cfg.solver.base_lr == 0.001 and list(cfg.solver.steps) == [60000] and cfg.solver.max_iter == 80000
        assert list(cfg.model.anchor.sizes) == [128, 256, 512]
        assert "passes over 07+" in text  # the schedule's epochs are stated
    assert cfg.solver.momentum == 0.9 and cfg.solver.weight_decay == 0.0005
    # the paper's system: py-faster-rcnn's generate_anchors, centred in the cell
    assert cfg.model.anchor.style == "py-faster-rcnn" and cfg.model.anchor.offset == 0.5

    # the named ImageNet weights are the backbone's, with matching input settings
    _, fmt, uri_arch, url = resolve_weights_uri(cfg.model.weights)
    assert uri_arch == arch and url
    if arch == "vgg16":
        assert cfg.model.backbone.name == "vgg16" and cfg.model.roi_heads.pooler_resolution == 7
        # torchvision's documented ImageNet normalization, (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) x 255, RGB
        assert fmt == "torchvision" and cfg.model.input_format == "RGB"
        assert list(cfg.model.pixel_mean) == pytest.approx([123.675, 116.28, 103.53])
        assert list(cfg.model.pixel_std) == pytest.approx([58.395, 57.12, 57.375])
    else:
        # MSRA Caffe models: BGR, mean subtracted, std 1, stride in the 1x1 conv, fixed BN
        assert fmt == "msra" and cfg.model.backbone.depth == int(arch[len("resnet"):])
        assert cfg.model.input_format == "BGR" and cfg.model.backbone.stride_in_1x1
        assert list(cfg.model.pixel_mean) == pytest.approx([103.53, 116.28, 123.675])
        assert list(cfg.model.pixel_std) == [1.0, 1.0, 1.0]
        assert cfg.model.backbone.norm == "FrozenBN" and cfg.model.backbone.freeze_at == 2


def test_detectron2_c4_recipe():
    """configs/coco_r50_c4_d2_1x.yaml is Detectron2's R50-C4 1x (Base-RCNN-C4.yaml,
    faster_rcnn_R_50_C4_1x.yaml, defaults.py; shared/PAPER_FACTS.md)."""
    name = "coco_r50_c4_d2_1x.yaml"
    cfg = load_config(name)
    assert "35.7 box AP" in (CONFIG_DIR / name).read_text()
    m, r, h = cfg.model, cfg.model.rpn, cfg.model.roi_heads
    assert m.backbone.depth == 50 and m.weights == "msra://R-50" and m.backbone.stride_in_1x1
    assert m.backbone.norm == "FrozenBN" and m.backbone.freeze_at == 2 and m.input_format == "BGR"
    assert list(m.anchor.sizes) == [32, 64, 128, 256, 512] and list(m.anchor.aspect_ratios) == [0.5, 1.0, 2.0]
    assert m.anchor.offset == 0.0 and m.anchor.style == "exact_area"
    assert r.boundary_threshold == -1 and r.smooth_l1_beta == 0.0 and r.post_nms_topk_test == 1000
    assert (r.pre_nms_topk_train, r.post_nms_topk_train, r.pre_nms_topk_test) == (12000, 2000, 6000)
    assert h.pooler_type == "ROIAlignV2" and h.pooler_resolution == 14 and h.batch_size_per_image == 512
    assert h.positive_fraction == 0.25 and h.smooth_l1_beta == 0.0 and h.nms_thresh_test == 0.5
    assert h.score_thresh_test == 0.05 and h.detections_per_image == 100 and h.num_classes == 80
    assert list(cfg.input.min_size_train) == list(range(640, 801, 32)) and cfg.input.max_size_train == 1333
    assert cfg.input.min_size_test == 800 and cfg.input.max_size_test == 1333
    s = cfg.solver
    assert s.ims_per_batch == 16 and s.base_lr == 0.02 and s.warmup_iters == 1000 and s.warmup_factor == 0.001
    assert s.max_iter == 90000 and list(s.steps) == [60000, 80000] and s.weight_decay == 0.0001
    assert list(cfg.data.train) == ["coco_2017_train"] and list(cfg.data.test) == ["coco_2017_val"]
    model = build_model(load_config(name, ["model.weights="]))
    assert model.rpn.anchor_generator.num_anchors == 15


def test_table9_configs_turn_on_their_rows_options():
    from detectron_res.evaluation.paper_tables import PAPER_TABLE9

    rows = {"coco_r101.yaml": "coco", "coco_r101_table9_box.yaml": "coco+box",
            "coco_r101_table9_ctx.yaml": "coco+ctx", "coco_r101_table9.yaml": "coco+ms"}
    for name, row in rows.items():
        cfg = load_config(name)
        flags = (cfg.model.roi_heads.box_refinement, cfg.model.roi_heads.global_context, bool(cfg.test.scales))
        assert flags == PAPER_TABLE9[row][1], name
        assert "Table 9" in (CONFIG_DIR / name).read_text() or row == "coco"
    # Appendix B: the pyramid's shorter sides
    assert list(load_config("coco_r101_table9.yaml").test.scales) == [200, 400, 600, 800, 1000]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    generate_shapes_dataset(str(root / "shapes"), num_train=4, num_val=2, image_size=(64, 96), seed=1)
    return root


DEMO_DATA = [
    "data.train=[shapes_train]", "data.test=[shapes_val]", "model.roi_heads.num_classes=4", "model.weights=",
    # speed only: small inputs, 2 images, fewer RoIs through the per-region head, no loader processes
    "input.min_size_train=[128]", "input.max_size_train=160", "solver.ims_per_batch=2", "data.num_workers=0",
    "model.roi_heads.batch_size_per_image=16", "model.rpn.pre_nms_topk_train=300", "model.rpn.post_nms_topk_train=50",
]


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_paper_config_trains_one_iteration(name, data_root, monkeypatch):
    monkeypatch.setenv("DETECTRON_RES_DATASETS", str(data_root))
    cfg = load_config(name, DEMO_DATA)
    dataset = load_train_dataset(cfg)
    check_label_space(cfg, dataset, what="training dataset")
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer, scheduler = build_optimizer_and_scheduler(cfg, model)
    trained = [(n, p.detach().clone()) for n, p in model.named_parameters() if p.requires_grad]
    trainer = Trainer(model=model, optimizer=optimizer, scheduler=scheduler, max_iter=1,
                      data_loader=make_train_loader(cfg, dataset))
    trainer.train()
    losses = {k: v for (k, (v, _)) in trainer.storage.latest().items() if k.startswith("loss")}
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
    assert all(math.isfinite(v) for v in losses.values())
    changed = [n for n, before in trained if not torch.equal(before, dict(model.named_parameters())[n])]
    assert any(n.startswith("backbone.") for n in changed) and any(n.startswith("roi_heads.") for n in changed)
    # frozen stages stay frozen (freeze_at = 2: stem and res2 / conv1_x and conv2_x)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("backbone.") for n in frozen)


def _fake_msra_pickle(path, depth):
    """A file in the MSRA/Detectron blob format for ResNet-``depth``, from random canonical weights."""
    from detectron_res.modeling.backbone.resnet import ResNet

    canonical = ResNet(depth, stride_in_1x1=True, norm="FrozenBN", num_classes=1000).state_dict()
    blobs = {}
    for key, sources in key_table(f"resnet{depth}", "msra").items():
        if sources:
            blobs[sources[0]] = canonical[key].numpy().astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    return canonical, blobs


def test_config_weights_go_through_the_weight_import(tmp_path, monkeypatch):
    """coco_r50.yaml names msra://R-50; a file in that format (placed where the
    download would put it) initializes the trunk and res5 of the detector."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = load_config("coco_r50.yaml")
    path, _, _, _ = resolve_weights_uri(cfg.model.weights)
    assert str(path).startswith(str(tmp_path))
    _, blobs = _fake_msra_pickle(path, 50)
    model = build_model(cfg)
    what = initialize_weights(model, cfg.model.weights, cfg)
    assert what.startswith("ImageNet resnet50 from msra://R-50")
    state = model.state_dict()
    # Caffe2 names: res2_0_branch2a_w is res2's first bottleneck's first conv; res5 runs per region
    assert torch.equal(state["backbone.res2.0.conv1.weight"], torch.from_numpy(blobs["res2_0_branch2a_w"]))
    assert torch.equal(state["roi_heads.res5.0.conv1.weight"], torch.from_numpy(blobs["res5_0_branch2a_w"]))
