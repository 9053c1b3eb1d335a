"""The machine a run measures on: what it is, how loaded, and its dense matmul rate.

* :func:`machine_info` (CPU model, cores, threads, versions, the GPU) and
  :func:`cpu_isa` (AVX2 / AVX-512 / native bf16) go into the results' ``machine``;
* :func:`load_average` is the background load at the start and end of a run;
* :func:`matmul_flops` and :class:`Matmul` time a dense matrix product: the
  machine's arithmetic limit, which our inference's FLOP/s is compared with
  (:class:`Matmul` is timed in the same turns as the detectors).
"""
from __future__ import annotations

import os
import statistics
from typing import Dict, Optional, Tuple

import torch
import torchvision

from benchmarks.timing import Timer
from detectron_res.precision import cpu_flags, cpu_native_bf16


def cpu_isa() -> Dict[str, object]:
    """The CPU's vector ISA as it matters here: AVX2 / AVX-512, VNNI and native bf16
    (AVX512-BF16, AMX); from ``/proc/cpuinfo`` (else torch's own CPU report)."""
    flags = cpu_flags()
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16") if f in flags]
    return {"flags": shown, "native_bf16": cpu_native_bf16(flags)}


def machine_info(device: torch.device) -> Dict[str, object]:
    """CPU model, cores, torch threads, versions and (CUDA) the card's name."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: Dict[str, object] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["cudnn_tf32"] = bool(torch.backends.cudnn.allow_tf32)
    else:
        info["mkldnn"] = torch.backends.mkldnn.is_available()
    info["cpu_isa"] = cpu_isa()
    return info


def load_average() -> Optional[Tuple[float, float, float]]:
    """1/5/15-minute load averages (a shared machine's background load), if known."""
    try:
        return os.getloadavg()
    except OSError:
        return None


def format_load(load: Optional[Tuple[float, float, float]]) -> str:
    """Load averages as the results record them: ``"1.2, 0.9, 0.8"``, or ``"-"`` where unknown."""
    return "-" if load is None else ", ".join(f"{v:.1f}" for v in load)


def default_matmul_size(device: torch.device, dtype: torch.dtype) -> int:
    """8192 on CUDA; 2048 on the CPU, but 512 for bf16 on a CPU without native bf16
    (AVX512-BF16 / AMX), which emulates it at well under 1 GFLOP/s: a 2048^3
    product would take a minute."""
    if device.type == "cuda":
        return 8192
    return 512 if dtype == torch.bfloat16 and cpu_native_bf16() is None else 2048


def matmul_flops(device: torch.device, *, dtype: torch.dtype = torch.float32, size: Optional[int] = None, repeats: int = 5) -> Dict[str, float]:
    """Dense ``size x size`` matmul rate in FLOP/s (2 n^3 per product): the machine's limit.

    Returns the median and the best of ``repeats`` timed products (one untimed
    first). ``size`` defaults to :func:`default_matmul_size`.
    """
    if size is None:
        size = default_matmul_size(device, dtype)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=g).to(device=device, dtype=dtype)
    timer = Timer(device)
    timer(lambda: a @ b)
    times = [timer(lambda: a @ b) for _ in range(repeats)]
    flop = 2.0 * size**3
    return {
        "size": size,
        "dtype": str(dtype).replace("torch.", ""),
        "median_flops": flop / statistics.median(times),
        "best_flops": flop / min(times),
        "threads": torch.get_num_threads(),
    }


class Matmul:
    """A dense ``size x size`` matmul as a no-argument call (timed in turns with the detectors)."""

    def __init__(self, device: torch.device, dtype: torch.dtype, size: int):
        g = torch.Generator().manual_seed(0)
        self.a = torch.randn(size, size, generator=g).to(device=device, dtype=dtype)
        self.b = torch.randn(size, size, generator=g).to(device=device, dtype=dtype)
        self.size, self.dtype, self.flop = size, dtype, 2.0 * size**3

    def __call__(self) -> None:
        if self.a.is_cuda and self.dtype == torch.float32:
            # Match the precision cuDNN gives the detectors' fp32 convolutions
            # (TF32 unless torch.backends.cudnn.allow_tf32 is turned off).
            saved = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
            try:
                torch.mm(self.a, self.b)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = saved
        else:
            torch.mm(self.a, self.b)


def fp32_matmul(device: torch.device) -> Matmul:
    """The fp32 matmul: the rate that ours' fp32 inference is compared with."""
    return Matmul(device, torch.float32, default_matmul_size(device, torch.float32))
