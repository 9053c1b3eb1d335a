"""Optimizer parameter groups and the warmup + multi-step LR schedule."""
import io

import pytest
import torch
from torch import nn

from detectron_res.engine.solver import WarmupMultiStepLR, build_optimizer, warmup_multistep_factor


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)  # weight + bias
        self.bn = nn.BatchNorm2d(4)  # norm weight + bias
        self.gn = nn.GroupNorm(2, 4)
        self.frozen = nn.Linear(4, 4)
        for p in self.frozen.parameters():
            p.requires_grad_(False)
        self.fc = nn.Linear(4, 2, bias=False)


def test_param_groups_weight_decay():
    net = Net()
    opt = build_optimizer(net, base_lr=0.01, momentum=0.9, weight_decay=1e-4, weight_decay_norm=0.0,
                          weight_decay_bias=2e-4)
    by_name = {g["name"]: g for g in opt.param_groups}
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(by_name["weights"]["params"]) == ids([net.conv.weight, net.fc.weight])
    assert ids(by_name["biases"]["params"]) == ids([net.conv.bias])
    assert ids(by_name["norm"]["params"]) == ids([net.bn.weight, net.bn.bias, net.gn.weight, net.gn.bias])
    assert by_name["weights"]["weight_decay"] == 1e-4
    assert by_name["biases"]["weight_decay"] == 2e-4
    assert by_name["norm"]["weight_decay"] == 0.0
    # frozen parameters are not optimized
    all_ids = set().union(*(ids(g["params"]) for g in opt.param_groups))
    assert not all_ids & ids(net.frozen.parameters())
    assert all(g["momentum"] == 0.9 and g["lr"] == 0.01 for g in opt.param_groups)


def test_bad_lr_and_no_params():
    with pytest.raises(ValueError, match="solver.base_lr=0"):
        build_optimizer(Net(), base_lr=0.0)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(frozen, base_lr=0.1)


@pytest.mark.parametrize(
    "it,expected",
    [
        (0, 0.001),  # warmup starts at warmup_factor
        (5, 0.001 * 0.5 + 0.5),  # halfway: linear interpolation
        (10, 1.0),
        (99, 1.0),
        (100, 0.1),  # first step: "steps" are the first iterations at the lower LR
        (199, 0.1),
        (200, 0.01),
    ],
)
def test_factor_by_hand(it, expected):
    f = warmup_multistep_factor(it, steps=[100, 200], gamma=0.1, warmup_iters=10, warmup_factor=0.001)
    assert f == pytest.approx(expected)


def test_scheduler_matches_factor_and_resumes():
    """The Appendix A COCO schedule shape (0.001, then x0.1), stepped per iteration."""
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.001, momentum=0.9)
    sched = WarmupMultiStepLR(opt, steps=[6], gamma=0.1, warmup_iters=3, warmup_factor=0.1)
    lrs = []
    for _ in range(9):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.001 * warmup_multistep_factor(i, steps=[6], gamma=0.1, warmup_iters=3, warmup_factor=0.1)
                for i in range(9)]
    assert lrs == pytest.approx(expected)
    assert lrs[0] == pytest.approx(1e-4) and lrs[5] == pytest.approx(1e-3) and lrs[6] == pytest.approx(1e-4)

    # state round trip through the weights_only loader, into a fresh scheduler
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.001, momentum=0.9)
    sched2 = WarmupMultiStepLR(opt2, steps=[6], gamma=0.1, warmup_iters=3, warmup_factor=0.1)
    sched2.load_state_dict(state)
    sched.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def test_steps_must_increase():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=r"solver.steps=\[20, 10\]"):
        WarmupMultiStepLR(opt, steps=[20, 10])
