"""Detection evaluation: PASCAL VOC (devkit rules) and COCO (pycocotools).

Typical use (what ``tools/train_net.py --eval-only`` does)::

    from detectron_res.evaluation import VOCEvaluator, inference_on_dataset, write_metrics, plot_pr_curves

    evaluator = VOCEvaluator(dataset, output_dir=out)          # year from dataset.extra
    results = inference_on_dataset(model, loader, evaluator, device="cuda")
    write_metrics({dataset.name: results}, out)                  # {"voc_2007_test": {"voc": {...}}}
    plot_pr_curves(evaluator.pr_curves, out / "pr_curves")

All metrics are in percent.
"""

from .coco import COCO_METRIC_NAMES, COCOEvaluator, dataset_to_coco_dict, evaluate_coco, predictions_to_coco_results
from .evaluator import DatasetEvaluator, gather_predictions, merge_predictions
from .inference import inference_on_dataset
from .report import plot_pr_curves, write_json, write_metrics
from .voc import (
    VOC_CLASSES,
    VOCEvaluator,
    VOCGroundTruth,
    evaluate_voc,
    load_devkit_ground_truth,
    pack_voc_server_submission,
    parse_voc_annotation,
    read_comp4,
    split_by_class,
    voc_ap,
    voc_box_iou,
    voc_eval_class,
    write_comp4,
)

__all__ = [
    "COCO_METRIC_NAMES",
    "COCOEvaluator",
    "DatasetEvaluator",
    "VOC_CLASSES",
    "VOCEvaluator",
    "VOCGroundTruth",
    "dataset_to_coco_dict",
    "evaluate_coco",
    "evaluate_voc",
    "gather_predictions",
    "inference_on_dataset",
    "load_devkit_ground_truth",
    "merge_predictions",
    "pack_voc_server_submission",
    "parse_voc_annotation",
    "plot_pr_curves",
    "predictions_to_coco_results",
    "read_comp4",
    "split_by_class",
    "voc_ap",
    "voc_box_iou",
    "voc_eval_class",
    "write_comp4",
    "write_json",
    "write_metrics",
]
