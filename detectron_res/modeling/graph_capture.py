"""Whether the model is being captured as a graph (TorchScript, ONNX export, torch.compile).

Code paths that only make sense when eager PyTorch runs the model (inference mode,
oneDNN's packed weights) ask :func:`exporting_or_compiling` and step aside.
"""
from __future__ import annotations

import torch

__all__ = ["exporting_or_compiling"]


def exporting_or_compiling() -> bool:
    """True while tracing, scripting, exporting to ONNX or compiling with torch.compile."""
    compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or (compiling is not None and compiling())
    )
