"""Safe reading of weight files: nothing in a file may run code or build objects.

``.pth`` files are read with ``torch.load(..., weights_only=True)``; ``.pkl`` files with
:class:`RestrictedUnpickler`, which only rebuilds numpy arrays and plain containers.
A file that would run code when loaded raises :class:`UnsafeWeightsError`; weights
holding NaN or infinity are refused (:func:`refuse_non_finite`).
"""
from __future__ import annotations

import codecs
import collections
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .errors import UnsafeWeightsError, WeightsFormatError


def _numpy_globals() -> Dict[Tuple[str, str], Any]:
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: Dict[Tuple[str, str], Any] = {}
    # Pickles name numpy 1.x modules (numpy.core) or numpy 2 ones (numpy._core).
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only numpy arrays, numpy scalars and plain containers.

    Every global a pickle names goes through :meth:`find_class`; anything outside
    the allow-list (``os.system``, ``builtins.eval``, any class) raises
    :class:`UnsafeWeightsError` before it can be called. dict, list, tuple, str,
    bytes, numbers, bool and None need no globals at all.
    """

    _ALLOWED_BUILTINS = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        # Python 3 pickles bytes with protocol <= 2 as _codecs.encode(text, "latin1").
        ("_codecs", "encode"): codecs.encode,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
    }

    def __init__(self, file, *, source: str) -> None:
        # latin1 decodes Python 2 str objects (Detectron's pickles) into the bytes
        # numpy expects when rebuilding arrays.
        super().__init__(file, encoding="latin1")
        self._source = source
        self._allowed = {**self._ALLOWED_BUILTINS, **_numpy_globals()}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        raise UnsafeWeightsError(
            f"{self._source}: refusing to unpickle global '{module}.{name}' "
            "(weight pickles may only contain numpy arrays and plain containers)"
        )


def _load_pickle(path: Path) -> Any:
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, source=str(path)).load()
        except UnsafeWeightsError:
            raise
        except Exception as e:  # truncated or not a pickle at all
            raise WeightsFormatError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from e


def refused_pickle_reason(error: BaseException) -> Optional[str]:
    """What a ``torch.load(weights_only=True)`` error refused, as one short line, or None.

    torch raises ``pickle.UnpicklingError`` with a paragraph whose first line
    advises re-running with ``weights_only=False`` (which would run the file's
    code); what matters is the global the file asked for ("Trying to load
    unsupported GLOBAL posix.system ..."; older versions: "Unsupported global:
    GLOBAL posix.system was not an allowed global ..."). A file naming a global
    outside torch's allow-list would build arbitrary objects or run code when
    unpickled. Returns ``"global 'posix.system'"``; None for other errors
    (truncated, random or foreign bytes: "Unsupported operand 216"), which make a
    file unreadable, not unsafe.
    """
    if not isinstance(error, pickle.UnpicklingError):
        return None
    match = re.search(r"GLOBAL ([\w.]+)", str(error))
    return f"global '{match.group(1).rstrip('.')}'" if match else None


def torch_error_line(error: BaseException) -> str:
    """One informative line of any ``torch.load`` error (for one-line messages)."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "In PyTorch")
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(boilerplate)]
    return f"{type(error).__name__}: {(useful or lines or [''])[0]}".rstrip(": ")


def _load_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated / foreign / unsafe files
        refused = refused_pickle_reason(e)
        if refused is not None:
            raise UnsafeWeightsError(
                f"{path}: refusing to load: the file names {refused}, outside torch.load(weights_only=True)'s "
                "allow-list (weights hold only tensors, numbers, strings and containers; this file would build "
                "other objects or run code when unpickled)"
            ) from None
        raise WeightsFormatError(f"{path}: not a readable torch file ({torch_error_line(e)})") from None


def _read_file(path: Path) -> Any:
    """Read ``path`` with the safe loader its extension (or content) calls for; non-finite
    weights are refused (:func:`refuse_non_finite`)."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".pkl":
        obj = _load_pickle(path)
    elif path.suffix in (".pth", ".pt") or zipfile.is_zipfile(path):
        obj = _load_torch(path)
    else:
        obj = _load_pickle(path)
    refuse_non_finite(obj, path, WeightsFormatError)
    return obj


def _first_non_finite(obj: Any) -> Optional[Tuple[str, int, int]]:
    """``(dotted key, non-finite count, size)`` of the first floating tensor or array in
    ``obj`` (nested dicts / lists, in order) holding NaN or infinity; None when all are finite.

    Iterative, and each container and tensor is visited once (by identity): a pickle
    may nest lists deeper than the recursion limit, or share one list many times over.
    """
    seen: set = set()
    stack: List[Tuple[str, Any]] = [("", obj)]
    while stack:
        key, node = stack.pop()
        if id(node) in seen:
            continue
        if isinstance(node, torch.Tensor):
            seen.add(id(node))
            if node.is_floating_point() or node.is_complex():
                bad = int((~torch.isfinite(node)).sum())
                if bad:
                    return key, bad, node.numel()
        elif isinstance(node, np.ndarray):
            seen.add(id(node))
            if np.issubdtype(node.dtype, np.floating) or np.issubdtype(node.dtype, np.complexfloating):
                bad = int((~np.isfinite(node)).sum())
                if bad:
                    return key, bad, int(node.size)
        elif isinstance(node, (dict, list, tuple)):
            seen.add(id(node))
            items = list(node.items() if isinstance(node, dict) else enumerate(node))
            stack.extend((f"{key}.{k}" if key else str(k), v) for k, v in reversed(items))
    return None


def refuse_non_finite(obj: Any, path: str | os.PathLike, error_type: type = WeightsFormatError) -> None:
    """Refuse weights or a checkpoint holding a NaN or infinite value in any float tensor.

    Such weights load and run, and a detector with them finds nothing ("0 detections",
    exit 0). The one check of every weights and checkpoint reader
    (:func:`_read_file` here, ``engine.checkpoint.read_checkpoint_file``): training
    initialization, resume, inference, export, evaluation, the classifier.

    Raises:
        error_type: one line naming the file, the first such tensor and how many values.
    """
    found = _first_non_finite(obj)
    if found is not None:
        key, bad, size = found
        raise error_type(
            f"{path}: tensor '{key}' holds {bad} NaN or infinite value(s) of {size}; refusing weights that are "
            "not finite (a diverged run or a corrupt file)"
        )
