"""What a run measures and what each part costs: the scale settings and the plan of parts.

* :func:`scale_settings`: image size, proposal count and sweep points of a full
  run (the paper's scale, Appendix A) or of ``--quick`` (tiny, every code path);
* :func:`plan_parts`: the parts of a run in order of importance (inference and
  training per depth, contention, profile, scaling), each with its estimated
  cost, from which ``run.measure`` shares out the ``--budget-s`` wall time and
  skips what would not fit.
"""
from __future__ import annotations

from typing import Any, Dict, List

from benchmarks.detectors import INFERENCE_ABLATION, TRAINING_ABLATION

# Cost of each part's first turn in units of one inference call of R-50 'ours' at the
# run's scale (measured on the 2-core CPU: a training iteration of batch 2 costs ~4.2
# inference calls per detector, R-101 ~1.25x R-50, the scaling sweep ~6 calls plus
# building its detectors). Used to skip a part that would not fit in the budget.
COST_UNITS = {"inference": 1.4, "training": 4.2, "profile": 1.3, "scaling": 8.0}
# A bf16 variant's cost relative to its fp32 one (a CPU with native bf16, guessed
# from the matmul rates: 2.3x faster products, the rest unchanged).
BF16_COST = 0.6
# A depth's cost relative to R-50's.
DEPTH_COST = {18: 0.5, 34: 0.7, 50: 1.0, 101: 1.25, 152: 1.6}


def scale_settings(quick: bool) -> Dict[str, Any]:
    """Image size, proposal count and sweep points of a full or ``--quick`` run."""
    if quick:
        # Tiny images and few RoIs: the point is to run every code path, fast.
        return {
            "image_size": (128, 160),
            "spec": dict(min_size=128, max_size=160, num_proposals=16, pre_nms_topk=500, rois_per_image_train=8,
                         pre_nms_topk_train=500, post_nms_topk_train=100),
            "sizes": [96, 128],
            "proposals": [8, 16],
        }
    # Appendix A: shorter side 600, longer at most 1000; 300 proposals. A 4:3 image (COCO's typical shape).
    return {
        "image_size": (600, 800),
        "spec": dict(min_size=600, max_size=1000, num_proposals=300),
        # The ends and the middle of each range: 5 distinct detector runs (600 px with
        # 300 proposals is a point of both sweeps); 800 px and 1000 proposals add ~30 s.
        "sizes": [400, 600, 1000],
        "proposals": [100, 300, 600],
    }


def plan_parts(args, ablation: bool) -> List[Dict[str, Any]]:
    """The parts of a run in order of importance, each with its estimated cost.

    ``cost``: seconds of one turn of every detector in the part, in units of one
    R-50 'ours' inference call (``COST_UNITS``); ``turns``: how many turns the
    part should get when the budget allows, which sets its share of the budget.
    """
    parts: List[Dict[str, Any]] = []
    n_inference_ablation = 1 + len(INFERENCE_ABLATION)
    n_training_ablation = 1 + (len(TRAINING_ABLATION) + 1 if args.train_ablation else 0)
    pair = 2 + (2 * BF16_COST if args.bf16 else 0)  # ours and torchvision, fp32 (and bf16)
    for i, depth in enumerate(args.depths):
        depth_cost = DEPTH_COST.get(depth, 1.0)
        with_ablation = ablation and i == 0
        variants = pair + (n_inference_ablation if with_ablation else 0)
        parts.append({"kind": "inference", "depth": depth, "ablation": with_ablation,
                      "cost": COST_UNITS["inference"] * depth_cost * variants, "turns": 2})
        if "train" in args.skip:
            continue
        for batch_size in args.train_batch_sizes:
            variants = pair + (n_training_ablation if with_ablation else 0)
            parts.append({"kind": "training", "depth": depth, "batch_size": batch_size, "ablation": with_ablation,
                          "cost": COST_UNITS["training"] * depth_cost * variants * batch_size / 2,
                          "turns": 2 if i == 0 else 1})
    if args.contention and "train" not in args.skip and "contention" not in args.skip:
        # The first depth's first batch size; slower by the load (one core of two taken: ~1.5x).
        depth, batch_size = args.depths[0], args.train_batch_sizes[0]
        parts.append({"kind": "contention", "depth": depth, "batch_size": batch_size, "ablation": False,
                      "cost": COST_UNITS["training"] * DEPTH_COST.get(depth, 1.0) * 4 * batch_size / 2 * 1.5,
                      "turns": 2})
    if "profile" not in args.skip:
        parts.append({"kind": "profile", "cost": COST_UNITS["profile"], "turns": 1})
    if "scaling" not in args.skip:
        parts.append({"kind": "scaling", "cost": COST_UNITS["scaling"], "turns": 1})
    return parts
