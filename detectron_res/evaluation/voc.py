"""PASCAL VOC evaluation: the evaluator, and the public names of the VOC modules.

* :mod:`.voc_ap`: AP maths, the official devkit's protocol (default) and
  py-faster-rcnn's, bit for bit, vectorized (``evaluate_voc``, ``voc_ap``, ...).
* :mod:`.voc_comp4`: comp4 result files (write, read, pack for the server).
* :mod:`.voc_devkit`: the ground truth of a VOCdevkit tree (for tools/eval_voc.py),
  read with the data package's VOC XML parser.
* here: :class:`VOCEvaluator`, which ties them to a dataset and a model's outputs.

Everything is importable from here (``from detectron_res.evaluation.voc import
evaluate_voc, write_comp4, VOCEvaluator``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Hashable, Mapping, Optional, Union

from .evaluator import DatasetEvaluator, Prediction
from .report import path_component

# Re-exported (see __all__ below), besides what the evaluator uses.
from .voc_ap import (
    DEVKIT_RECALL_THRESHOLDS,
    PY_FASTER_RCNN_RECALL_THRESHOLDS,
    VOC_CLASSES,
    VOC_IOU_THRESHOLDS,
    VOC_PROTOCOLS,
    ClassDetections,
    PathLike,
    VOCGroundTruth,
    check_voc_protocol,
    evaluate_voc,
    format_voc_table,
    matlab_colon,
    use_07_metric_for_year,
    voc_ap,
    voc_box_iou,
    voc_eval_class,
    voc_eval_class_thresholds,
)
from .voc_ap import __all__ as _AP_NAMES  # the module shares its name with its function voc_ap
from .voc_comp4 import __all__ as _COMP4_NAMES
from .voc_comp4 import comp4_file_name, pack_voc_server_submission, read_comp4, split_by_class, write_comp4
from .voc_devkit import __all__ as _DEVKIT_NAMES
from .voc_devkit import load_devkit_ground_truth, parse_voc_annotation

logger = logging.getLogger(__name__)

# The public names: each module's own, plus the evaluator (one list per module, kept there).
__all__ = [*_AP_NAMES, "VOCEvaluator", *_COMP4_NAMES, *_DEVKIT_NAMES]


# ----------------------------------------------------------------------------
# The evaluator
# ----------------------------------------------------------------------------
# Split names recognized at the end of a dataset name (shapes_val -> val).
_KNOWN_SPLITS = ("trainval", "train", "val", "test", "minival", "valminusminival", "testdev")


def split_from_dataset_name(name: str) -> str:
    """The split a dataset name ends with (``shapes_val`` -> ``val``), else the whole name.

    Names the comp4 files of datasets that do not record their split, so that a
    validation set's files never read ``comp4_det_test_*``.
    """
    tail = str(name).rsplit("_", 1)[-1].lower()
    return tail if tail in _KNOWN_SPLITS else str(name)  # write_comp4 makes it one path component


class VOCEvaluator(DatasetEvaluator):
    """PASCAL VOC evaluator (devkit rules) for any dataset the toolkit reads.

    Args:
        dataset: a ``DetectionDataset``; ``extra["year"]`` and ``extra["split"]`` are
            used when present.
        year: overrides the dataset's year; decides the metric (2007-2009: 11-point
            AP; 2010+: area). ``None`` = ``dataset.extra["year"]``.
        use_07_metric: overrides the year's choice of metric.
        protocol: ``"devkit"`` (default: the official MATLAB devkit, bit for bit) or
            ``"py-faster-rcnn"`` (its ``voc_eval.py``, bit for bit, to compare with
            numbers published by Python toolkits); config key ``test.voc_protocol``.
        output_dir: if given, the comp4 result files are written to
            ``output_dir/comp4/`` (and, in submission mode, packed).
        submission_only: True when the test labels are not public (VOC2012 test): no
            AP is computed; the comp4 files are written to ``output_dir`` and packed
            into ``output_dir/voc<year>_<split>_submission.tar.gz`` for the
            evaluation server. ``None`` = True when ``dataset.extra["images_only"]`` is
            set or for year 2012, split "test".

    ``evaluate()`` returns (percent): ``mAP50`` (the VOC metric), ``mAP75``,
    ``mAP50_95``, ``per_class``, ``per_class_50_95`` (see :func:`evaluate_voc`); in
    submission mode ``{"submission": path of the archive, "num_detections": n}``.
    After ``evaluate()``, :attr:`pr_curves` holds per-class precision/recall arrays
    (IoU 0.5) for :func:`~detectron_res.evaluation.report.plot_pr_curves`.
    """

    name = "voc"

    def __init__(
        self,
        dataset: Any,
        *,
        year: Optional[Union[str, int]] = None,
        use_07_metric: Optional[bool] = None,
        protocol: str = "devkit",
        output_dir: Optional[PathLike] = None,
        submission_only: Optional[bool] = None,
    ) -> None:
        super().__init__(dataset)
        self.protocol = check_voc_protocol(protocol, "VOCEvaluator protocol (config key test.voc_protocol)")
        extra = getattr(dataset, "extra", None) or {}
        year = year if year not in (None, "") else extra.get("year")
        self.year = str(year) if year not in (None, "") else None
        # The split names the comp4 files (comp4_det_<split>_<class>.txt): a dataset that
        # does not record one (COCO / YOLO formats) takes it from its name's suffix.
        self.split = str(extra.get("split") or split_from_dataset_name(dataset.name))
        if use_07_metric is None:
            if self.year is None:
                raise ValueError(
                    f"VOCEvaluator: dataset '{dataset.name}' has no extra['year'] to choose the VOC metric; "
                    "pass year='2007' (11-point AP) or year='2012' (area), or use_07_metric=True|False "
                    "(config key test.voc_year)"
                )
            use_07_metric = use_07_metric_for_year(self.year)
        self.use_07_metric = bool(use_07_metric)
        if submission_only is None:
            # the data catalog marks splits without public labels with extra["images_only"]
            submission_only = bool(extra.get("images_only")) or (self.year == "2012" and self.split == "test")
        self.submission_only = bool(submission_only)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        if self.submission_only and self.output_dir is None:
            raise ValueError(
                f"VOCEvaluator: dataset '{dataset.name}' (VOC{self.year} {self.split}) has no public labels; "
                "pass output_dir so the results can be written and packed for the evaluation server"
            )
        self.pr_curves: Dict[str, Dict[str, Any]] = {}
        # What the PR curves' AP is, for their titles.
        self.pr_curve_ap_name = "VOC07 11-point AP at IoU 0.5" if self.use_07_metric else "VOC area AP at IoU 0.5"

    def evaluate_predictions(self, predictions: Mapping[Hashable, Prediction]) -> Dict[str, Any]:
        class_names = list(self.dataset.class_names)
        detections = split_by_class(predictions, class_names)
        if self.submission_only:
            assert self.output_dir is not None
            results_dir = self.output_dir / "comp4"
            write_comp4(results_dir, self.split, class_names, detections)
            year = self.year or "2012"
            archive = pack_voc_server_submission(
                results_dir,
                self.output_dir / f"voc{path_component(year)}_{path_component(self.split)}_submission.tar.gz",
                class_names=class_names,
                split=self.split,
                year=year,
            )
            num = sum(len(d["scores"]) for d in detections.values())
            logger.info("VOC%s %s: labels are not public; results for the evaluation server: %s", year, self.split,
                        archive)  # fmt: skip
            # absolute: the path stays valid wherever the metrics file is read from
            return {"submission": str(archive.resolve()), "num_detections": num}
        if self.output_dir is not None:
            write_comp4(self.output_dir / "comp4", self.split, class_names, detections)
        gt = VOCGroundTruth.from_dataset(self.dataset)
        metrics, self.pr_curves = evaluate_voc(
            gt, detections, use_07_metric=self.use_07_metric, protocol=self.protocol
        )
        metric = ("11-point" if self.use_07_metric else "area") + f", {self.protocol} protocol"
        logger.info(
            "%s",
            format_voc_table(
                metrics, title=f"VOC evaluation of '{self.dataset.name}' ({metric} AP, {gt.num_images} images):"
            ),
        )
        return metrics
