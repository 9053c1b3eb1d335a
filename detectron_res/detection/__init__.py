"""Object detection (Faster R-CNN C4): the application ``tools/train_net.py`` runs.

- ``task``   :class:`~.task.DetectionTask`, the detector's pieces for the engine's run
  skeleton (datasets, model, weight initialization, loader, COCO / VOC evaluation,
  summary), and :func:`~.task.train` / :func:`~.task.evaluate_checkpoint`.

The model itself is ``detectron_res/modeling``; the loop, checkpoints and hooks are
``detectron_res/engine``.
"""
from .task import DetectionTask, evaluate_checkpoint, train

__all__ = ["DetectionTask", "evaluate_checkpoint", "train"]
