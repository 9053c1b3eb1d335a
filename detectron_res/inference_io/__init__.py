"""Detections for files on disk: what ``tools/infer.py`` does, usable from Python.

The route from command-line arguments to written results, one module per step:

* :mod:`.inputs`: which files the arguments name (files, folders, glob patterns,
  videos; :func:`discover_inputs`);
* :mod:`.naming`: where each input's results go, named and checked before the
  model is loaded (:func:`plan_outputs`, :meth:`OutputPlan.check`);
* :mod:`.run`: the :class:`~detectron_res.predictor.Predictor` run over the images
  and video frames, annotated copies and JSON written atomically (:func:`predict_files`).

From Python::

    from pathlib import Path
    from detectron_res import Predictor
    from detectron_res.inference_io import discover_inputs, plan_outputs, predict_files

    inputs, failures, _, _ = discover_inputs(["photos/", "clip.mp4"])
    plan = plan_outputs(Path("results"), inputs)
    plan.check(overwrite=False)                  # OutputError if an earlier run's files are there
    result = predict_files(Predictor("output/demo/model_final.pth"), plan, failures=failures)
    print(result.stats.detections, result.summary["images"][0]["detections"])
"""

from .inputs import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    Discovered,
    Failure,
    InputFile,
    discover_inputs,
    kind_of,
    split_overrides,
)
from .naming import SUMMARY_FILE, OutputPlan, default_output_dir, earlier_run_outputs, plan_outputs
from .run import BOX_FORMAT, FilesResult, RunStats, num_items, predict_files, write_json

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "Discovered",
    "Failure",
    "InputFile",
    "discover_inputs",
    "kind_of",
    "split_overrides",
    "SUMMARY_FILE",
    "OutputPlan",
    "default_output_dir",
    "earlier_run_outputs",
    "plan_outputs",
    "BOX_FORMAT",
    "FilesResult",
    "RunStats",
    "num_items",
    "predict_files",
    "write_json",
]
