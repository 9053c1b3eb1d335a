"""Where the time of our inference goes: latency by stage against image size and proposal count.

:func:`scaling_section` builds ours at each point of the two sweeps of the run's
scale settings (shorter side; proposals) with the same weights and times one
call or two, split into stages by :class:`StageTimer` (forward hooks). The plot
and tables are written by ``report.py``.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import nn

from benchmarks.detectors import DetectorSpec, build_ours, make_images, optimize_for_inference
from benchmarks.inference import inference_fn, padded_size
from benchmarks.results import STAGES
from benchmarks.timing import Budget, Timer, first_call_is_timed, synchronize
from detectron_res.analysis import count_c4_detector_macs


class StageTimer:
    """Wall time spent in the stages of our detector during calls, via forward hooks.

    Stages: ``trunk`` (backbone), ``rpn``, ``roi_pool``, ``res5``, ``predictor``,
    ``roi_post`` (the rest of the RoI heads: decoding, NMS), ``other``
    (preprocessing, mapping boxes back). The device is synchronized at every
    boundary, so each stage's time is its own. ``res5`` is the time of
    ``ROIHeads.pool_and_res5`` less the pooling in it: res5 is not always called
    as one module (its first conv may run on the map before pooling).
    """

    STAGES = STAGES  # the order the report lists them in (``results.STAGES``)

    def __init__(self, model: nn.Module, device: torch.device):
        self.device = device
        self.totals: Dict[str, float] = {}
        self._start: Dict[str, float] = {}
        self.rois: List[int] = []
        heads = model.roi_heads
        self._modules = {
            "trunk": model.backbone,
            "rpn": model.rpn,
            "roi_heads": heads,
            "roi_pool": heads.pooler,
            "predictor": heads.predictor,
        }
        self._handles = []
        for name, module in self._modules.items():
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name)))
        self._handles.append(heads.register_forward_pre_hook(self._count_rois))
        # A method has no hooks: time it through an instance attribute, removed by remove().
        self._heads = heads
        pool_and_res5 = heads.pool_and_res5

        def timed_pool_and_res5(*args, **kwargs):
            self._pre("pool_and_res5")(None, args)
            out = pool_and_res5(*args, **kwargs)
            self._post("pool_and_res5")(None, args, out)
            return out

        heads.pool_and_res5 = timed_pool_and_res5

    def _pre(self, name):
        def hook(_module, _args):
            synchronize(self.device)
            self._start[name] = time.perf_counter()

        return hook

    def _post(self, name):
        def hook(_module, _args, _output):
            synchronize(self.device)
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - self._start.pop(name)

        return hook

    def _count_rois(self, _module, args):
        self.rois.append(sum(len(p) for p in args[1]))

    def run(self, fn: Callable[[], Any]) -> Dict[str, float]:
        """Call ``fn`` once; seconds per stage and ``total``."""
        self.totals = {}
        total = Timer(self.device)(fn)
        t = self.totals
        stages = {
            "trunk": t.get("trunk", 0.0),
            "rpn": t.get("rpn", 0.0),
            "roi_pool": t.get("roi_pool", 0.0),
            "res5": t.get("pool_and_res5", 0.0) - t.get("roi_pool", 0.0),
            "predictor": t.get("predictor", 0.0),
        }
        stages["roi_post"] = t.get("roi_heads", 0.0) - stages["roi_pool"] - stages["res5"] - stages["predictor"]
        stages["other"] = total - t.get("trunk", 0.0) - t.get("rpn", 0.0) - t.get("roi_heads", 0.0)
        stages["total"] = total
        return stages

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        if "pool_and_res5" in vars(self._heads):
            del self._heads.pool_and_res5


def scaling_section(args, ours: nn.Module, base_spec: DetectorSpec, settings, budget: Budget, share_s: float) -> Dict[str, Any]:
    """Latency by stage of our optimized detector against the shorter side and the proposal count.

    Each point is a detector built from its own config (input size, proposal
    count) with the weights of ``ours``.
    """
    device = args.device
    height, width = settings["image_size"]
    points: List[Tuple[str, int, DetectorSpec, Tuple[int, int]]] = []
    for side in settings["sizes"]:
        # Keep the 4:3 image; the max size grows with it so that the shorter side is what is set.
        long_side = int(round(side * width / height))
        points.append(("size", side, base_spec.with_(min_size=side, max_size=long_side), (side, long_side)))
    for n in settings["proposals"]:
        points.append(("proposals", n, base_spec.with_(num_proposals=n), (height, width)))
    state = ours.state_dict()
    rows: List[Dict[str, Any]] = []
    measured: Dict[Tuple[DetectorSpec, Tuple[int, int]], Dict[str, Any]] = {}
    deadline = budget.elapsed() + share_s
    for kind, value, spec, (h, w) in points:
        if (spec, (h, w)) in measured:  # 600 px with 300 proposals is a point of both sweeps
            rows.append(dict(measured[(spec, (h, w))], sweep=kind, value=value))
            continue
        model = build_ours(spec, seed=args.seed)
        model.load_state_dict(state)
        model = optimize_for_inference(model).to(device)
        images = make_images(1, h, w, seed=args.seed, device=device)
        stages = StageTimer(model, device)
        fn = inference_fn(model, images, device, "fp32")
        first = stages.run(fn)  # new shapes: a warm-up on CUDA, a sample on the CPU
        runs = [first] if first_call_is_timed(device) else []
        if not runs or args.quick or budget.elapsed() + first["total"] < deadline:
            runs.append(stages.run(fn))
        stages.remove()
        best = min(runs, key=lambda r: r["total"])
        rows.append(
            {
                "sweep": kind,
                "value": value,
                "image": [h, w],
                "proposals": spec.num_proposals,
                "rois": stages.rois[-1] if stages.rois else None,
                "calls": len(runs),
                "stages_s": best,
                "macs": count_c4_detector_macs(model, padded_size(h, w), spec.num_proposals)["total"],
            }
        )
        measured[(spec, (h, w))] = rows[-1]
    return {"rows": rows}
