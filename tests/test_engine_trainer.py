"""The training loop and its hooks, on a toy model that trains in milliseconds.

The toy "detector" draws a random subset of its inputs every step (like RoI
sampling), so exact resume is only possible when the RNG state, the data position,
the optimizer momentum and the LR schedule are all restored.
"""
import json
import logging
import signal

import pytest
import torch
from torch import nn

from detectron_res.engine.checkpoint import Checkpointer, find_last_checkpoint, load_checkpoint
from detectron_res.engine.hooks import HookBase, default_hooks
from detectron_res.engine.solver import WarmupMultiStepLR, build_optimizer
from detectron_res.engine.trainer import NonFiniteLossError, Trainer
from helpers import ToyDetector, ToyLoader
from signal_helpers import SignalBeforeIteration

def make_trainer(out, *, max_iter=10, resume=False, nan_at=None, period=3, extra_hooks=(), eval_fn=None,
                 best_metric="", clip=0.0, base_lr=0.05):
    torch.manual_seed(0)
    model = ToyDetector(nan_at)
    opt = build_optimizer(model, base_lr=base_lr, momentum=0.9, weight_decay=1e-4)
    sched = WarmupMultiStepLR(opt, steps=[6], gamma=0.1, warmup_iters=2, warmup_factor=0.1)
    state = load_checkpoint(find_last_checkpoint(out)) if resume else None
    start = state["iteration"] + 1 if state else 0
    if state:
        model.load_state_dict(state["model"])
    trainer = Trainer(model=model, optimizer=opt, scheduler=sched, data_loader=ToyLoader(start), max_iter=max_iter,
                      start_iter=start, clip_grad_norm=clip, extra_state={"class_names": ["thing"]})
    hooks = default_hooks(checkpointer=Checkpointer(out, keep_last=2), optimizer=opt, scheduler=sched,
                          checkpoint_period=period, output_dir=out, log_period=2, eval_period=4, eval_fn=eval_fn,
                          best_metric=best_metric, resume_from_iter=state["iteration"] if state else None)
    trainer.register_hooks(list(hooks) + list(extra_hooks))
    if state:
        trainer.load_training_state(state)
    return trainer


class Crash(HookBase):
    """Simulates a crash (an exception escaping the loop) after a given iteration."""

    def __init__(self, at):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at:
            raise KeyboardInterrupt


def weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_after_crash_gives_identical_weights(tmp_path):
    ref = make_trainer(tmp_path / "ref")
    ref.train()
    assert ref.completed
    expected = weights(ref)

    run = tmp_path / "run"
    t = make_trainer(run, extra_hooks=[Crash(at=7)])
    with pytest.raises(KeyboardInterrupt):
        t.train()
    assert not (run / "model_final.pth").exists()
    assert find_last_checkpoint(run).name == "model_0000006.pth"  # period 3: after 3 and 6 iterations
    resumed = make_trainer(run, resume=True)
    assert resumed.start_iter == 6
    resumed.train()
    assert_same(weights(resumed), expected)

    # metrics.json of the resumed run continues without the lines of iterations 6..7 twice
    its = [json.loads(line)["iteration"] for line in (run / "metrics.json").read_text().splitlines()]
    assert its == sorted(its) and len(its) == len(set(its))
    # a change that the restored state must carry is really there: without
    # the RNG restore, the resumed weights differ
    bad = make_trainer(run, resume=True)
    torch.manual_seed(123)
    bad.start_iter = bad.iter = 6
    bad.train()
    assert not torch.equal(bad.model.lin.weight, expected["lin.weight"])


def test_checkpoint_contents(tmp_path):
    t = make_trainer(tmp_path, max_iter=4)
    t.train()
    state = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert state["format_version"] == 1 and state["iteration"] == 3
    assert state["sampler"]["batches_consumed"] == 4
    assert state["class_names"] == ["thing"]
    for key in ("model", "optimizer", "scheduler", "scaler", "rng"):
        assert key in state
    assert state["scheduler"]["last_epoch"] == 4
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == ["model_0000003.pth", "model_final.pth"]


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tmp_path):
    t = make_trainer(tmp_path, nan_at=4)
    with pytest.raises(NonFiniteLossError) as e:
        t.train()
    msg = str(e.value)
    assert "in iteration 5/10:" in msg and "loss_a=nan" in msg and "loss_b=" in msg  # the 5th (0-based 4)
    assert "\n" not in msg
    # weights untouched by the bad step, last checkpoint intact, no final checkpoint
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    assert not (tmp_path / "model_final.pth").exists()
    last = find_last_checkpoint(tmp_path)
    assert last.name == "model_0000003.pth"
    state = load_checkpoint(last)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_checkpoints_and_stops(tmp_path, signum):
    previous = signal.getsignal(signum)
    ref = make_trainer(tmp_path / "ref", max_iter=8)
    ref.train()

    run = tmp_path / "run"
    t = make_trainer(run, max_iter=8, extra_hooks=[SignalBeforeIteration(at=4, signum=signum)])
    t.train()  # returns normally
    assert not t.completed and t.iter == 4
    assert find_last_checkpoint(run).name == "model_0000005.pth"  # 5 iterations done
    assert signal.getsignal(signum) == previous  # handler restored
    resumed = make_trainer(run, max_iter=8, resume=True)
    resumed.train()
    assert_same(weights(resumed), weights(ref))


def test_logging_outputs(tmp_path, caplog):
    # setup_logging (called by other tests in the same session) stops propagation
    # to the root logger, so attach caplog's handler to the package logger itself.
    package_logger = logging.getLogger("detectron_res")
    package_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="detectron_res"):
            make_trainer(tmp_path, max_iter=6).train()
    finally:
        package_logger.removeHandler(caplog.handler)
    records = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 3, 5]  # log_period 2, and the last iteration
    for r in records:
        for key in ("total_loss", "loss_a", "loss_b", "lr", "time", "data_time"):
            assert key in r, key
    assert records[0]["lr"] == pytest.approx(0.05 * (0.1 * 0.5 + 0.5))  # iteration 1 of a 2-iteration warmup
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "training_curves.png").stat().st_size > 1000
    lines = [r.getMessage() for r in caplog.records if "iter:" in r.getMessage()]
    assert lines and all("eta:" in m and "lr:" in m and "data_time:" in m and "loss_a:" in m for m in lines)


def test_periodic_eval_and_best_checkpoint(tmp_path):
    scores = iter([0.5, 0.9, 0.7])  # evaluations after iterations 3, 7 and at the end (9)

    def eval_fn():
        return {"toy": {"score": next(scores), "name": "not a number: dropped"}}

    t = make_trainer(tmp_path, eval_fn=eval_fn, best_metric="toy/score")
    t.train()
    best = load_checkpoint(tmp_path / "model_best.pth")
    assert best["iteration"] == 7 and best["best_metric"]["value"] == pytest.approx(0.9)
    records = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    evals = [(r["iteration"], r["toy/score"]) for r in records if "toy/score" in r]
    assert evals == [(3, 0.5), (7, 0.9), (9, 0.7)]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"  # best does not move the pointer


def test_best_metric_typo_is_named(tmp_path):
    t = make_trainer(tmp_path, eval_fn=lambda: {"voc": {"mAP50": 0.5}}, best_metric="voc/map50")
    with pytest.raises(ValueError, match="test.best_metric='voc/map50' is not among the evaluation metrics: voc/mAP50"):
        t.train()


def test_gradient_clipping_bounds_the_step(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.0)

    class Big(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, batch):
            x, y = batch
            return {"loss": 1000 * ((self.m(x) - y) ** 2).mean()}

    t = Trainer(model=Big(), optimizer=opt, data_loader=ToyLoader(), max_iter=1, clip_grad_norm=0.5)
    t.train()
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert delta.norm().item() == pytest.approx(0.5, rel=1e-4)  # lr 1: the step is the clipped gradient
    assert t.storage.history("grad_norm")[0][1] > 0.5


def test_fp16_amp_needs_cuda_bf16_runs_on_the_cpu():
    with pytest.raises(ValueError, match="solver.amp.dtype=torch.float16 needs a CUDA device"):
        Trainer(model=ToyDetector(), optimizer=torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1),
                data_loader=ToyLoader(), max_iter=1, amp_dtype=torch.float16)
    t = Trainer(model=ToyDetector(), optimizer=torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1),
                data_loader=ToyLoader(), max_iter=1, amp_dtype=torch.bfloat16)
    assert t.amp_dtype == torch.bfloat16 and t.grad_scaler is None  # bf16 needs no loss scaling
