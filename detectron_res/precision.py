"""Numeric precision of the network: float32, or bfloat16 autocast where the hardware has it.

One decision, used by every inference route (``Predictor``, ``tools/infer.py``,
``tools/train_net.py --eval-only`` and the evaluation hook during training, config
key ``test.precision``) and by training (``solver.amp``)::

    precision = resolve_precision("auto", device)   # -> Precision("bf16", "auto: the CPU has avx512_bf16")
    with autocast(precision.name, device):
        outputs = model(images)

``"bf16"`` runs the network's convolutions and matrix products under
``torch.autocast(dtype=torch.bfloat16)``: oneDNN's bf16 kernels on a CPU with
AVX512-BF16 or AMX, tensor cores on a GPU. Everything autocast does not lower
(softmax, box decoding, clipping, NMS, the score threshold) sees float32: the
detector casts the heads' outputs to float32 before post-processing, so boxes and
scores come out float32 whatever the precision.

``"auto"`` is bf16 where the hardware computes it natively (a CUDA GPU; a CPU with
``avx512_bf16`` or ``amx_bf16``) and float32 elsewhere: without native bf16 the CPU
emulates it with conversions, slower than float32.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Collection, ContextManager, Optional, Union

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "PRECISIONS",
    "Precision",
    "autocast",
    "cast_for_autocast",
    "cpu_flags",
    "cpu_native_bf16",
    "precision_dtype",
    "resolve_precision",
]

#: The values of ``Predictor(precision=...)``, ``tools/infer.py --precision`` and
#: config key ``test.precision``.
PRECISIONS = ("auto", "fp32", "bf16")

#: CPU flags (``/proc/cpuinfo`` names) of native bf16 arithmetic: AVX512-BF16
#: (AMD Zen 4+, Intel Cooper Lake+) and AMX (Intel Sapphire Rapids+).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

_DTYPES = {"fp32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` is ``"fp32"`` or ``"bf16"``; ``reason`` says why."""

    name: str
    reason: str

    @property
    def dtype(self) -> Optional[torch.dtype]:
        """The autocast dtype, None for float32."""
        return precision_dtype(self.name)

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset:
    """The CPU's feature flags, lower case: ``/proc/cpuinfo``'s ``flags`` line (Linux),
    else the names of ``torch.cpu.get_capabilities()`` that are true (other systems)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags") and ":" in line:
                    return frozenset(line.split(":", 1)[1].lower().split())
    except OSError:
        pass
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is None:
        return frozenset()
    return frozenset(name.lower() for name, value in get().items() if value is True)


def cpu_native_bf16(flags: Optional[Collection[str]] = None) -> Optional[str]:
    """The flag that gives this CPU native bf16 arithmetic (``"avx512_bf16"`` /
    ``"amx_bf16"``), or None.

    Args:
        flags: CPU flags to decide from; default :func:`cpu_flags` (tests pass fakes).
    """
    flags = cpu_flags() if flags is None else {f.lower() for f in flags}
    return next((f for f in NATIVE_BF16_FLAGS if f in flags), None)


def precision_dtype(name: str) -> Optional[torch.dtype]:
    """``"fp32"`` -> None (no autocast), ``"bf16"`` -> ``torch.bfloat16``."""
    if name not in _DTYPES:
        raise ValueError(f"precision must be fp32 or bf16 once resolved, got {name!r}")
    return _DTYPES[name]


def resolve_precision(
    precision: str,
    device: Union[str, torch.device],
    *,
    flags: Optional[Collection[str]] = None,
    what: str = "precision",
) -> Precision:
    """Turn ``"auto"`` / ``"fp32"`` / ``"bf16"`` into the precision to run on ``device``.

    Args:
        precision: one of :data:`PRECISIONS`.
        device: where the model runs.
        flags: CPU flags (default: this machine's, :func:`cpu_flags`).
        what: the option's name in error messages (``--precision``, ``test.precision``).
    Raises:
        ValueError: an unknown name.
    """
    text = str(precision).strip().lower()
    if text not in PRECISIONS:
        raise ValueError(f"{what} must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    device = torch.device(device)
    if text != "auto":
        return Precision(text, f"{what}={text}")
    if device.type == "cuda":
        # Ampere and later compute bf16 natively; older GPUs (V100, T4) emulate it, slower than fp32.
        if _cuda_bf16_supported(device):
            return Precision("bf16", "auto: CUDA with native bf16")
        return Precision("fp32", "auto: this CUDA GPU has no native bf16 (before Ampere)")
    flag = cpu_native_bf16(flags)
    if flag is not None:
        return Precision("bf16", f"auto: the CPU has {flag}")
    return Precision("fp32", f"auto: the CPU has no native bf16 ({' or '.join(NATIVE_BF16_FLAGS)})")


def _cuda_bf16_supported(device: torch.device) -> bool:
    """Whether the GPU computes bf16 natively (compute capability 8.0 or later)."""
    if not torch.cuda.is_available():
        return True  # nothing to run on anyway; resolve_device reports the missing GPU
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index) >= (8, 0)


def autocast(name: str, device: Union[str, torch.device]) -> ContextManager:
    """``torch.autocast`` to bf16 on ``device``'s type for ``"bf16"``; nothing for ``"fp32"``."""
    dtype = precision_dtype(name)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@torch.no_grad()
def cast_for_autocast(module: nn.Module, dtype: torch.dtype) -> int:
    """Store, once, the weights that autocast would convert to ``dtype`` on every call.

    Under autocast a convolution or linear layer converts its float32 weight and
    bias to the autocast dtype at every call (a full read and write of the weights;
    the weight cache of ``torch.autocast`` applies only while autograd records).
    Converting them ahead of time gives the same rounded values, so the outputs
    are those of the float32 module under autocast, exactly; the module must then
    run under autocast (float32 inputs would not meet bf16 weights).

    Converted: ``nn.Conv2d`` (``Conv2dNorm`` included, but only without a norm
    left after it: a FrozenBN that is not folded scales the weight in float32
    first) and ``nn.Linear``. Their memory format (channels-last) is kept.

    Args:
        module: changed in place.
        dtype: the autocast dtype, e.g. ``torch.bfloat16``.
    Returns:
        the number of parameter tensors converted (0 the second time).
    """
    converted = 0
    for sub in module.modules():
        if not isinstance(sub, (nn.Conv2d, nn.Linear)):
            continue
        norm = getattr(sub, "norm", None)
        if norm is not None and not isinstance(norm, nn.Identity):
            continue
        for param in (sub.weight, sub.bias):
            if param is not None and param.is_floating_point() and param.dtype != dtype:
                # .to keeps the strides (channels-last stays channels-last).
                param.data = param.data.to(dtype)
                converted += 1
    return converted
