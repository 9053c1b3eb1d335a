"""Optimizer and learning-rate schedule.

The paper trains with SGD, momentum 0.9, weight decay 5e-4 (py-faster-rcnn
defaults) and a step schedule: COCO 240k iterations at 0.001 then 80k at 0.0001
(Appendix A), VOC 60k at 0.001 then 20k at 0.0001 (Faster R-CNN).  Linear warmup
is not in the paper; it is available (``solver.warmup_iters``) because large
batches and models trained from scratch (the demo) diverge without it. A constant
warm-up (``solver.warmup_method=constant``) is the ResNet-110 recipe of Sec 4.2.

:func:`build_optimizer_and_scheduler` reads both from a config's ``solver`` section
(the one every task's config shares, ``detectron_res.config.SolverConfig``).
"""

from __future__ import annotations

import bisect
from typing import Sequence

import torch
from torch import nn

# Parameters of these modules count as "norm" parameters for weight_decay_norm.
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def build_optimizer(
    model: nn.Module,
    *,
    base_lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    weight_decay_norm: float = 0.0,
    weight_decay_bias: float = 5e-4,
) -> torch.optim.SGD:
    """SGD with momentum and per-group weight decay.

    Three parameter groups (empty ones are dropped): norm-layer scales and shifts
    (``weight_decay_norm``; decaying a norm's gamma towards 0 only fights the
    normalization), other biases (``weight_decay_bias``) and all other weights
    (``weight_decay``).  Frozen parameters (``requires_grad=False``: the frozen stem
    and res2 of the paper's fine-tuning, FrozenBN buffers) are not handed to SGD.
    """
    if base_lr <= 0:
        raise ValueError(f"solver.base_lr={base_lr}: expected a positive learning rate")
    norm_params, bias_params, other_params = [], [], []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, _NORM_TYPES):
                norm_params.append(param)
            elif name == "bias":
                bias_params.append(param)
            else:
                other_params.append(param)
    groups = [
        {"params": other_params, "weight_decay": weight_decay, "name": "weights"},
        {"params": bias_params, "weight_decay": weight_decay_bias, "name": "biases"},
        {"params": norm_params, "weight_decay": weight_decay_norm, "name": "norm"},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("build_optimizer: the model has no trainable parameters (check model.backbone.freeze_at)")
    return torch.optim.SGD(groups, lr=base_lr, momentum=momentum)


WARMUP_METHODS = ("linear", "constant")


def warmup_multistep_factor(
    iteration: int, *, steps: Sequence[int], gamma: float, warmup_iters: int, warmup_factor: float,
    warmup_method: str = "linear",
) -> float:
    """LR multiplier at ``iteration`` (0-based).

    ``gamma ** (number of steps <= iteration)``, times, over the first
    ``warmup_iters`` iterations, a linear ramp from ``warmup_factor`` to 1
    (``"linear"``) or ``warmup_factor`` itself (``"constant"``: "we use 0.01 to warm
    up the training until the training error is below 80% (about 400 iterations),
    and then go back to 0.1", Sec 4.2).
    """
    factor = gamma ** bisect.bisect_right(list(steps), iteration)
    if iteration < warmup_iters:
        if warmup_method == "constant":
            return factor * warmup_factor
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


class WarmupMultiStepLR(torch.optim.lr_scheduler.LRScheduler):
    """Linear (or constant) warmup followed by multi-step decay, stepped once per ITERATION.

    ``scheduler.last_epoch`` is the iteration whose LR is currently set, so after
    resuming from a checkpoint of iteration ``i`` it is ``i + 1``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        steps: Sequence[int],
        gamma: float = 0.1,
        warmup_iters: int = 0,
        warmup_factor: float = 0.001,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        if warmup_method not in WARMUP_METHODS:
            raise ValueError(f"solver.warmup_method={warmup_method!r}: expected 'linear' or 'constant'")
        steps = [int(s) for s in steps]
        if steps != sorted(steps):
            raise ValueError(f"solver.steps={steps}: expected increasing iteration numbers")
        if warmup_iters < 0:
            raise ValueError(f"solver.warmup_iters={warmup_iters}: expected >= 0")
        self.steps = steps
        self.gamma = float(gamma)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def _factor(self) -> float:
        return warmup_multistep_factor(
            self.last_epoch,
            steps=self.steps,
            gamma=self.gamma,
            warmup_iters=self.warmup_iters,
            warmup_factor=self.warmup_factor,
            warmup_method=self.warmup_method,
        )

    def get_lr(self) -> list[float]:  # closed form: no dependence on the previous LR
        return [base_lr * self._factor() for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()



def build_optimizer_and_scheduler(cfg, model: nn.Module) -> tuple[torch.optim.SGD, WarmupMultiStepLR]:
    """SGD and the warmup + multi-step schedule from config section ``solver``."""
    s = cfg.solver
    optimizer = build_optimizer(
        model,
        base_lr=float(s.base_lr),
        momentum=float(s.momentum),
        weight_decay=float(s.weight_decay),
        weight_decay_norm=float(s.weight_decay_norm),
        weight_decay_bias=float(s.weight_decay_bias),
    )
    scheduler = WarmupMultiStepLR(optimizer, steps=list(s.steps), gamma=float(s.gamma),
                                  warmup_iters=int(s.warmup_iters), warmup_factor=float(s.warmup_factor),
                                  warmup_method=str(s.warmup_method))
    return optimizer, scheduler
