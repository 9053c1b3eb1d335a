"""Training diagnostics for the plain-versus-residual question (ResNet paper Sec 4.2).

Three measurements, written during training:

* training and test error over iterations (Fig. 6): ``train_error`` (top-1 error
  of the training mini-batches, reported as the median of the last 20) and
  ``<split>/top1_err`` at each evaluation, both in ``metrics.json``;
* the standard deviation of each 3x3 layer's response (Fig. 7): the output of the
  layer's BN, before the ReLU or the residual addition, over the first
  ``diagnostics.response_std_images`` test images with the network in evaluation
  mode (BN uses its running statistics), at every evaluation;
* the L2 norm of the loss gradient of each stage (``stem``, ``stage1``.. or
  ``res2``.., ``fc``) every ``diagnostics.grad_norm_period`` iterations: the
  analysis the paper's reviewers asked for, to see whether plain nets' optimization
  difficulty comes with vanishing gradients (Sec 4.1 argues it does not, since BN
  keeps forward and backward signals at healthy norms).

The last two go to ``diagnostics.json`` in the run directory, one JSON object per
line: ``{"iteration": i, "grad_norm/stage1": ..., ...}`` and
``{"iteration": i, "response_std/stage1.0.conv1": ..., ...}`` (layer order is the
forward order). A resumed run drops the lines after its checkpoint first, so the
file stays monotonic. ``tools/plot_curves.py`` draws all three.

Definitions (so that the numbers can be recomputed independently):

* stage gradient norm: ``sqrt(sum over the stage's parameters of ||dL/dp||^2)``
  where ``L`` is the mean cross-entropy of the mini-batch (with DDP: averaged over
  processes) and ``dL/dp`` is ``p.grad`` after the backward pass, before weight
  decay (SGD adds the decay term internally, not to ``p.grad``);
* response std: the population standard deviation of all ``N x C x H x W``
  values of the layer's output over the images.
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import torch
from torch import nn

from ..engine import distributed as comm
from ..engine.events import JSONWriter
from ..engine.trainer import HookBase, run_without_rng_side_effects
from ..modeling.backbone.norm import Conv2dNorm
from .model import ImageClassifier, unwrap

logger = logging.getLogger(__name__)

__all__ = [
    "stage_parameters",
    "stage_gradient_norms",
    "response_layers",
    "layer_response_std",
    "ClassifierDiagnosticsHook",
    "DIAGNOSTICS_FILE",
]

DIAGNOSTICS_FILE = "diagnostics.json"


def _stage_of(child_name: str) -> str:
    # VGG-16's convs are direct children (conv1_1, conv1_2, ...): group them by block.
    if child_name.startswith("conv") and "_" in child_name:
        return child_name.split("_")[0]
    return child_name


def stage_parameters(model: ImageClassifier) -> "OrderedDict[str, List[nn.Parameter]]":
    """Trainable parameters of each stage of the backbone, in forward order.

    ResNet: ``stem, res2, res3, res4, res5, fc``; CIFAR nets: ``stem, stage1,
    stage2, stage3, fc``; VGG-16: ``conv1 .. conv5, fc6, fc7, fc8``.
    """
    stages: "OrderedDict[str, List[nn.Parameter]]" = OrderedDict()
    for name, child in model.backbone.named_children():
        params = [p for p in child.parameters() if p.requires_grad]
        if params:
            stages.setdefault(_stage_of(name), []).extend(params)
    return stages


@torch.no_grad()
def stage_gradient_norms(model: ImageClassifier) -> Dict[str, float]:
    """``{stage: L2 norm of the gradients of its parameters}`` from ``p.grad``.

    Stages without any gradient yet are left out.
    """
    out: Dict[str, float] = {}
    for stage, params in stage_parameters(model).items():
        grads = [p.grad.detach().float() for p in params if p.grad is not None]
        if grads:
            out[stage] = float(torch.sqrt(sum((g * g).sum() for g in grads)))
    return out


def response_layers(model: ImageClassifier) -> "OrderedDict[str, Conv2dNorm]":
    """Every 3x3 conv+norm of the backbone (the layers of Fig. 7), in forward order."""
    return OrderedDict(
        (name, m) for name, m in model.backbone.named_modules()
        if isinstance(m, Conv2dNorm) and tuple(m.kernel_size) == (3, 3)
    )


@torch.no_grad()
def layer_response_std(model: ImageClassifier, batches: Iterable[torch.Tensor],
                       device: Optional[torch.device] = None) -> Dict[str, float]:
    """Population std of each 3x3 layer's output (after its norm) over ``batches``.

    Args:
        model: the classifier; run as it is (call ``eval()`` first for Fig. 7).
        batches: ``(N, 3, S, S)`` or ``(N, 1, 3, S, S)`` images in 0..255.
        device: where to run (default: the model's).
    Returns:
        ``{layer name: std}`` in forward order (empty when no batch was given).
    """
    layers = response_layers(model)
    device = device or model.pixel_mean.device
    # float64 sums: N*C*H*W reaches 1e8 values for 1000 CIFAR images in stage1.
    sums = {name: torch.zeros(3, dtype=torch.float64, device=device) for name in layers}

    def make_hook(name: str) -> Callable:
        def hook(module, inputs, output):
            x = output.detach().double()
            sums[name] += torch.stack([x.new_tensor(float(x.numel())), x.sum(), (x * x).sum()])
        return hook

    handles = [m.register_forward_hook(make_hook(name)) for name, m in layers.items()]
    try:
        for images in batches:
            images = images.to(device)
            if images.dim() == 5:
                images = images.flatten(0, 1)
            model.logits(images)
    finally:
        for h in handles:
            h.remove()
    out: Dict[str, float] = {}
    for name, (n, s, ss) in ((k, v.tolist()) for k, v in sums.items()):
        if n > 0:
            mean = s / n
            out[name] = math.sqrt(max(ss / n - mean * mean, 0.0))
    return out


class ClassifierDiagnosticsHook(HookBase):
    """Records the training error, the stage gradient norms and the layer response stds.

    Register it after the engine's default hooks. Every rank runs it (the training
    error is averaged over ranks); only the main process writes ``diagnostics.json``.

    Args:
        output_dir: run directory.
        grad_norm_period: record stage gradient norms every this many iterations
            (0 = never); iteration 0 is always recorded when > 0.
        response_std_fn: called (model in eval mode, RNG isolated) at every
            ``eval_period`` and at the end of training; returns
            ``{layer: std}``. None = not recorded.
        eval_period: as ``test.eval_period`` (0 = only at the end).
        resume_from_iter: checkpoint iteration when resuming, else None.
        is_main: whether this process writes files.
    """

    def __init__(
        self,
        *,
        output_dir: str | Path,
        grad_norm_period: int = 0,
        response_std_fn: Optional[Callable[[], Dict[str, float]]] = None,
        eval_period: int = 0,
        resume_from_iter: Optional[int] = None,
        is_main: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.grad_norm_period = int(grad_norm_period)
        self.response_std_fn = response_std_fn
        self.eval_period = int(eval_period)
        self.resume_from_iter = resume_from_iter
        self.is_main = is_main
        self._json: Optional[JSONWriter] = None

    def before_train(self) -> None:
        writes = self.grad_norm_period > 0 or self.response_std_fn is not None
        if self.is_main and writes:
            self._json = JSONWriter(self.output_dir / DIAGNOSTICS_FILE, resume_from_iter=self.resume_from_iter)

    def _record_response_std(self) -> None:
        if self.response_std_fn is None:
            return
        model = self.trainer.model
        model.eval()
        try:
            stds = run_without_rng_side_effects(self.response_std_fn)
        finally:
            model.train()
        if self._json is not None and stds:
            self._json.write(self.trainer.iter, {f"response_std/{k}": v for k, v in stds.items()})

    def after_step(self) -> None:
        trainer = self.trainer
        it = trainer.iter
        classifier = unwrap(trainer.model)
        if classifier.last_batch_error is not None:
            err = comm.all_reduce_mean(classifier.last_batch_error.reshape(1).float())
            trainer.storage.put_scalar("train_error", 100.0 * float(err))
        if self.grad_norm_period > 0 and (it % self.grad_norm_period == 0 or it + 1 == trainer.max_iter):
            norms = stage_gradient_norms(classifier)
            if self._json is not None and norms:
                self._json.write(it, {f"grad_norm/{k}": v for k, v in norms.items()})
        if self.eval_period > 0 and (it + 1) % self.eval_period == 0 and it + 1 < trainer.max_iter:
            self._record_response_std()

    def after_train(self) -> None:
        try:
            if self.trainer.completed:
                self._record_response_std()
        finally:
            if self._json is not None:
                self._json.close()
                self._json = None
