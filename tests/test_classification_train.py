"""tools/train_classifier.py end to end, its checkpoint as detector weights, exact
resume, the CIFAR diagnostics (checked against independent computations) and
tools/plot_curves.py.

Everything runs on tiny generated data: an ImageNet-layout folder of 3 classes
(detectron_res.classification.synthetic) and a cifar-10-batches-py folder in the
official pickle format.
"""
import copy
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detectron_res.classification.checkpoint import (
    ClassifierTrainer,
    detection_overrides,
    load_classifier_checkpoint,
)
from detectron_res.classification.config import load_classifier_config
from detectron_res.classification.diagnostics import (
    ClassifierDiagnosticsHook,
    layer_response_std,
    stage_parameters,
)
from detectron_res.classification.loader import ClassificationBatch
from detectron_res.classification.model import DropoutLinear, build_classifier
from detectron_res.classification.synthetic import make_synthetic_cifar10, make_synthetic_imagenet
from detectron_res.classification.task import train_classifier
from detectron_res.config import load_config
from detectron_res.engine.checkpoint import CheckpointError, load_checkpoint
from detectron_res.engine.events import read_metrics_json
from detectron_res.exit_status import EXIT_OUTPUT_ERROR, EXIT_STOPPED_BY_SIGNAL
from detectron_res.detection.task import initialize_weights
from detectron_res.engine.solver import WarmupMultiStepLR
from detectron_res.modeling.build import build_model
from detectron_res.weights import load_imagenet_weights
from signal_helpers import SignalBeforeIteration
from helpers import load_tool as _load_tool

ROOT = Path(__file__).resolve().parent.parent


# A ResNet-18 at 1/8 width on 32x32 crops: a few CPU iterations per second.
TINY_IMAGENET = [
    "model.depth=18", "model.base_channels=8", "model.num_classes=3",
    "input.train_short_side=[40,56]", "input.crop_size=32", "input.test_short_side=40",
    "solver.ims_per_batch=16", "solver.base_lr=0.02", "solver.steps=[50]", "solver.max_iter=60",
    "solver.checkpoint_period=30", "test.eval_period=0", "test.images_per_batch=32",
    "data.num_workers=0", "log_period=10",
]


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    make_synthetic_imagenet(root, num_classes=3, train_per_class=24, val_per_class=10, seed=0)
    return root


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return make_synthetic_cifar10(tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py", num_train=100,
                                  num_test=40, seed=1)


def test_imagenet_classifier_end_to_end_then_initializes_a_detector(imagenet_root, tmp_path):
    out = tmp_path / "imagenet_r18"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "train_classifier.py"), "--config", "imagenet_r18.yaml",
         "--output-dir", str(out), "--device", "cpu", f"data.root={imagenet_root}", *TINY_IMAGENET],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Centre crop and 10-crop on the 30 val images: chance is 66.7% top-1 error.
    final = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()][-1]
    assert final["val/top1_err"] < 45.0 and final["val/top1_err_10crop"] < 45.0, final
    assert final["val/top5_err"] == 0.0  # 3 classes: always among the top 5
    assert {"config.yaml", "log.txt", "model_final.pth", "model_0000030.pth", "tensorboard"} <= {
        p.name for p in out.iterdir()}

    ckpt = out / "model_final.pth"
    state = load_classifier_checkpoint(ckpt)
    assert state["iteration"] == 59 and state["classifier"]["class_names"] == ["n00000000", "n00000001", "n00000002"]
    with pytest.raises(CheckpointError):  # not mistaken for a detector checkpoint by train_net
        load_checkpoint(ckpt)

    # --eval-only reproduces the numbers of the end of training.
    tool = _load_tool("train_classifier")
    assert tool.main(["--config", "imagenet_r18.yaml", "--output-dir", str(tmp_path / "eval"), "--device", "cpu",
                      "--eval-only", "--weights", str(ckpt), f"data.root={imagenet_root}", *TINY_IMAGENET]) == 0
    evaluation = json.loads((tmp_path / "eval" / "inference" / "evaluation.json").read_text())["metrics"]
    assert evaluation["val/top1_err"] == pytest.approx(final["val/top1_err"])
    assert evaluation["val/top1_err_10crop"] == pytest.approx(final["val/top1_err_10crop"])

    # The detector of train_net --weights, with the layout and input settings that
    # the tool prints for this checkpoint (here: the detection defaults, MSRA style).
    overrides = detection_overrides(state)
    assert "model.backbone.depth=18" in overrides and "model.input_format=BGR" in overrides
    det_cfg = load_config("demo_shapes.yaml", ["model.backbone.norm=FrozenBN", "model.backbone.freeze_at=0",
                                               *overrides])
    assert list(det_cfg.model.pixel_mean) == list(load_config(None).model.pixel_mean)
    detector = build_model(det_cfg)
    described = initialize_weights(detector, str(ckpt), det_cfg, class_names=["a", "b", "c", "d"])
    assert described.startswith("ImageNet resnet18")
    weights = state["state_dict"]
    det_sd = detector.state_dict()
    backbone_keys = [k for k in det_sd if k.startswith(("backbone.", "roi_heads.res5."))]
    assert len(backbone_keys) == len(weights) - 2  # every weight but the classifier's fc
    for key in backbone_keys:  # no backbone key left at its initialization
        if key.startswith("backbone."):
            source = key[len("backbone."):]
        else:
            source = "res5." + key[len("roi_heads.res5."):]
        assert torch.equal(det_sd[key], weights[source]), key
    report = detector.load_imagenet_backbone(load_imagenet_weights(ckpt))
    assert report.missing == [] and report.shape_mismatch == []
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]


def _cifar_overrides(root, *extra):
    return [f"data.root={root}", "solver.ims_per_batch=8", "solver.steps=[]", "solver.checkpoint_period=0",
            "test.images_per_batch=20", "diagnostics.response_std_images=16", "data.num_workers=0", "log_period=1",
            *extra]


def test_resume_continues_exactly(cifar_root, tmp_path):
    def cfg(max_iter):
        return load_classifier_config("cifar10_resnet20.yaml", _cifar_overrides(
            cifar_root, "model.depth=8", f"solver.max_iter={max_iter}", "test.eval_period=0",
            "diagnostics.grad_norm_period=1", "model.dropout=0.3"))

    train_classifier(cfg(6), output_dir=tmp_path / "straight", device="cpu")
    train_classifier(cfg(3), output_dir=tmp_path / "resumed", device="cpu")
    assert load_classifier_checkpoint(tmp_path / "resumed" / "model_final.pth")["iteration"] == 2
    train_classifier(cfg(6), output_dir=tmp_path / "resumed", device="cpu", resume=True)
    a = load_classifier_checkpoint(tmp_path / "straight" / "model_final.pth")
    b = load_classifier_checkpoint(tmp_path / "resumed" / "model_final.pth")
    assert a["iteration"] == b["iteration"] == 5
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    # Diagnostics of the resumed run: iterations 0..5 once each, equal to the straight run's.
    grad_a = [r for r in read_metrics_json(tmp_path / "straight" / "diagnostics.json") if "grad_norm/fc" in r]
    grad_b = [r for r in read_metrics_json(tmp_path / "resumed" / "diagnostics.json") if "grad_norm/fc" in r]
    assert [r["iteration"] for r in grad_b] == list(range(6))
    assert grad_a == grad_b


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_signal_checkpoints_exits_5_and_resume_finishes(cifar_root, tmp_path, monkeypatch, capsys, signum):
    import detectron_res.engine.run as engine_run

    original = engine_run.default_hooks
    monkeypatch.setattr(engine_run, "default_hooks",
                        lambda **kwargs: original(**kwargs) + [SignalBeforeIteration(2, signum)])
    tool = _load_tool("train_classifier")
    out = tmp_path / "run"
    args = ["--config", "cifar10_resnet20.yaml", "--output-dir", str(out), "--device", "cpu",
            *_cifar_overrides(cifar_root, "model.depth=8", "solver.max_iter=6", "test.eval_period=0")]
    previous = signal.getsignal(signum)
    assert tool.main(args) == EXIT_STOPPED_BY_SIGNAL == 5
    name = signal.Signals(signum).name
    ckpt = out / "model_0000003.pth"
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"stopped by {name} after 3 of 6 iterations; checkpoint {ckpt} written; continue with: --resume "
        f"(output: {out})")
    assert load_classifier_checkpoint(ckpt)["iteration"] == 2 and not (out / "model_final.pth").exists()
    assert signal.getsignal(signum) == previous  # handlers restored

    monkeypatch.setattr(engine_run, "default_hooks", original)
    assert tool.main([*args, "--resume"]) == 0
    assert load_classifier_checkpoint(out / "model_final.pth")["iteration"] == 5


def test_unwritable_output_directory_exits_6(cifar_root, tmp_path, capsys):
    tool = _load_tool("train_classifier")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = tool.main(["--config", "cifar10_resnet20.yaml", "--output-dir", str(blocker / "run"), "--device", "cpu",
                      *_cifar_overrides(cifar_root, "model.depth=8", "solver.max_iter=2", "test.eval_period=0")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_OUTPUT_ERROR == 6, err
    assert len(err) == 1 and err[0].startswith("error: ") and str(blocker) in err[0], err


def test_cifar_resnet20_and_plain20_write_the_diagnostics_and_plot_them(cifar_root, tmp_path):
    runs = []
    for name in ("cifar10_resnet20", "cifar10_plain20"):
        cfg = load_classifier_config(f"{name}.yaml", _cifar_overrides(
            cifar_root, "solver.max_iter=4", "test.eval_period=2", "diagnostics.grad_norm_period=1"))
        result = train_classifier(cfg, output_dir=tmp_path / name, device="cpu")
        assert 0.0 <= result["scalars"]["test/top1_err"] <= 100.0
        runs.append(tmp_path / name)
        metrics = read_metrics_json(tmp_path / name / "metrics.json")
        assert [r["iteration"] for r in metrics if "train_error" in r] == [0, 1, 2, 3]  # training error curve
        assert [r["iteration"] for r in metrics if "test/top1_err" in r] == [1, 3]  # test error curve
        diag = read_metrics_json(tmp_path / name / "diagnostics.json")
        grads = [r for r in diag if "grad_norm/stem" in r]
        assert [r["iteration"] for r in grads] == [0, 1, 2, 3]
        assert {k for k in grads[0] if k != "iteration"} == {f"grad_norm/{s}" for s in
                                                             ("stem", "stage1", "stage2", "stage3", "fc")}
        stds = [r for r in diag if any(k.startswith("response_std/") for k in r)]
        assert [r["iteration"] for r in stds] == [1, 3]
        assert len(stds[0]) - 1 == 19  # 6n + 1 = 19 3x3 layers in a 20-layer net

    plot = _load_tool("plot_curves")
    png = tmp_path / "plain_vs_resnet20.png"
    assert plot.main([str(p) for p in runs] + ["--out", str(png), "--summary", str(tmp_path / "s.json")]) == 0
    import matplotlib.image

    pixels = matplotlib.image.imread(png)
    assert pixels.shape[0] > 400 and pixels.shape[1] > 600 and pixels[..., :3].std() > 0.05  # a drawn figure
    summary = json.loads((tmp_path / "s.json").read_text())
    assert [row["run"] for row in summary] == ["ResNet-20", "plain-20"]
    assert plot.main([str(tmp_path / "missing")]) == 2


@pytest.mark.parametrize("residual", [True, False])
def test_stage_gradient_norms_equal_autograd_on_the_same_batch(residual, tmp_path):
    cfg = load_classifier_config("cifar10_resnet20.yaml", ["model.depth=8", f"model.residual={str(residual).lower()}"])
    torch.manual_seed(0)
    model = build_classifier(cfg)
    reference = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    batch = ClassificationBatch(images=torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g),
                                labels=torch.randint(0, 10, (6,), generator=g), indices=torch.arange(6))

    class Repeat:
        def __iter__(self):
            while True:
                yield batch

    # Weight decay and momentum are on: the recorded norm is of the loss gradient only.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    trainer = ClassifierTrainer(model=model, optimizer=optimizer, data_loader=Repeat(), max_iter=2)
    trainer.register_hooks([ClassifierDiagnosticsHook(output_dir=tmp_path, grad_norm_period=1)])
    trainer.train()
    records = read_metrics_json(tmp_path / "diagnostics.json")

    # Independently: the same initial weights and batch, the loss written out, torch.autograd.grad.
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for record, step in zip(records, range(2)):
        x = (batch.images.float() - torch.tensor(list(cfg.model.pixel_mean)).view(1, 3, 1, 1))
        loss = F.cross_entropy(reference.backbone(x), batch.labels)
        stages = stage_parameters(reference)
        grads = torch.autograd.grad(loss, [p for ps in stages.values() for p in ps])
        expected, k = {}, 0
        for stage, params in stages.items():
            expected[stage] = float(torch.sqrt(sum((gr ** 2).sum() for gr in grads[k:k + len(params)])))
            k += len(params)
        assert record["iteration"] == step
        for stage, value in expected.items():
            assert record[f"grad_norm/{stage}"] == pytest.approx(value, rel=1e-4), (stage, step)
        # Step the reference like the trainer did, so that iteration 1 compares too.
        for p, gr in zip([p for ps in stages.values() for p in ps], grads):
            p.grad = gr
        ref_opt.step()
    assert len(records) == 2


def _manual_cifar_forward(model, x):
    """Outputs of every 3x3 conv's BN, by an explicit re-implementation of the
    CIFAR ResNet in eval mode (conv, BN with running statistics, option-A shortcut)."""
    outs = []
    backbone = model.backbone

    def conv_bn(m, t):
        y = F.conv2d(t, m.weight, None, m.stride, m.padding)
        n = m.norm
        y = (y - n.running_mean.view(1, -1, 1, 1)) / torch.sqrt(n.running_var.view(1, -1, 1, 1) + n.eps)
        y = y * n.weight.view(1, -1, 1, 1) + n.bias.view(1, -1, 1, 1)
        outs.append(y)
        return y

    t = F.relu(conv_bn(backbone.stem.conv1, x))
    for stage in (backbone.stage1, backbone.stage2, backbone.stage3):
        for block in stage:
            y = conv_bn(block.conv2, F.relu(conv_bn(block.conv1, t)))
            if block.residual:
                s = t[:, :, :: block.stride, :: block.stride]
                s = torch.cat([s, s.new_zeros(s.shape[0], y.shape[1] - s.shape[1], *s.shape[2:])], dim=1)
                y = y + s
            t = F.relu(y)
    return outs


@pytest.mark.parametrize("residual", [True, False])
def test_layer_response_std_equals_a_manual_forward(residual):
    cfg = load_classifier_config("cifar10_resnet20.yaml", ["model.depth=14", f"model.residual={str(residual).lower()}"])
    torch.manual_seed(0)
    model = build_classifier(cfg)
    with torch.no_grad():  # non-trivial BN statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    model.eval()
    g = torch.Generator().manual_seed(2)
    batches = [torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=g) for _ in range(2)]
    got = layer_response_std(model, batches)
    x = torch.cat([(b.float() - torch.tensor(list(cfg.model.pixel_mean)).view(1, 3, 1, 1)) for b in batches])
    with torch.no_grad():
        expected = [float(np.std(o.double().numpy())) for o in _manual_cifar_forward(model, x)]
    assert len(got) == 13  # 6n + 1 for n = 2
    np.testing.assert_allclose(list(got.values()), expected, rtol=1e-5)


def test_constant_warmup_is_the_resnet110_recipe():
    cfg = load_classifier_config("cifar10_resnet110.yaml")
    s = cfg.solver
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=s.base_lr)
    sched = WarmupMultiStepLR(optimizer, warmup_method=s.warmup_method, steps=list(s.steps), gamma=s.gamma,
                                  warmup_iters=s.warmup_iters, warmup_factor=s.warmup_factor)
    optimizer.step()  # (the scheduler expects an optimizer step first)
    lrs = {}
    for it in range(48001):
        if it in (0, 399, 400, 31999, 32000, 48000):
            lrs[it] = optimizer.param_groups[0]["lr"]
        sched.step()
    assert lrs == pytest.approx({0: 0.01, 399: 0.01, 400: 0.1, 31999: 0.1, 32000: 0.01, 48000: 0.001})


def test_dropout_switch_keeps_the_weight_names():
    plain = build_classifier(load_classifier_config("cifar10_resnet1202.yaml", ["model.depth=8"]))
    regularized = build_classifier(load_classifier_config("cifar10_resnet1202.yaml",
                                                          ["model.depth=8", "model.dropout=0.5"]))
    assert isinstance(regularized.backbone.fc, DropoutLinear) and regularized.backbone.fc.p == 0.5
    assert list(plain.state_dict()) == list(regularized.state_dict())
    x = torch.randn(4, 64)
    regularized.eval()
    assert torch.equal(regularized.backbone.fc(x), F.linear(x, regularized.backbone.fc.weight,
                                                            regularized.backbone.fc.bias))
    regularized.train()
    torch.manual_seed(0)
    dropped = regularized.backbone.fc(x)
    torch.manual_seed(0)
    assert torch.allclose(dropped, F.linear(F.dropout(x, 0.5, True), regularized.backbone.fc.weight,
                                            regularized.backbone.fc.bias))


@pytest.mark.slow
def test_two_process_training_and_sharded_evaluation(cifar_root, tmp_path):
    """torchrun with 2 gloo processes: the global batch is split, the checkpoint is
    written once, and the sharded evaluation equals a single-process evaluation."""
    out = tmp_path / "ddp"
    args = ["--config", "cifar10_resnet20.yaml", "--device", "cpu",
            *_cifar_overrides(cifar_root, "model.depth=8", "solver.max_iter=3", "test.eval_period=0",
                              "diagnostics.grad_norm_period=1")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
         str(ROOT / "tools" / "train_classifier.py"), "--output-dir", str(out), *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = load_classifier_checkpoint(out / "model_final.pth")
    assert state["iteration"] == 2 and state["sampler"]["world_size"] == 2
    final = read_metrics_json(out / "metrics.json")[-1]
    tool = _load_tool("train_classifier")
    assert tool.main(["--output-dir", str(tmp_path / "eval"), "--eval-only", "--weights",
                      str(out / "model_final.pth"), *args]) == 0
    single = json.loads((tmp_path / "eval" / "inference" / "evaluation.json").read_text())
    assert single["num_images"] == 40
    assert single["metrics"]["test/top1_err"] == pytest.approx(final["test/top1_err"])


@pytest.mark.cuda
def test_training_with_amp_and_evaluation_on_the_device(cifar_root, tmp_path):
    """On a GPU (``DETECTRON_RES_TEST_DEVICE``, default cuda; skipped without one):
    bf16 autocast training with loader workers and pinned memory, then the device's
    fp32 evaluation of the checkpoint agrees with the CPU's (TF32 convolutions may
    flip one borderline image of the 40)."""
    from detectron_res.classification.task import evaluate_classifier_checkpoint

    device = os.environ.get("DETECTRON_RES_TEST_DEVICE", "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    amp = str(device.startswith("cuda")).lower()
    common = ["solver.max_iter=6", "test.eval_period=3", "diagnostics.grad_norm_period=1", "data.num_workers=2"]
    cfg = load_classifier_config("cifar10_resnet20.yaml", _cifar_overrides(
        cifar_root, *common, f"solver.amp.enabled={amp}", "solver.amp.dtype=bf16"))
    train_classifier(cfg, output_dir=tmp_path / "dev", device=device)
    grads = [r for r in read_metrics_json(tmp_path / "dev" / "diagnostics.json") if "grad_norm/fc" in r]
    assert len(grads) == 6 and all(np.isfinite(v) for r in grads for v in r.values())
    fp32 = load_classifier_config("cifar10_resnet20.yaml", _cifar_overrides(cifar_root, *common))
    ckpt = str(tmp_path / "dev" / "model_final.pth")
    on_device = evaluate_classifier_checkpoint(fp32, output_dir=tmp_path / "e1", weights=ckpt, device=device)
    on_cpu = evaluate_classifier_checkpoint(fp32, output_dir=tmp_path / "e2", weights=ckpt, device="cpu")
    assert abs(on_device["scalars"]["test/top1_err"] - on_cpu["scalars"]["test/top1_err"]) <= 100.0 / 40 + 1e-6
