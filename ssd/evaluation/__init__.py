"""Detection metrics: PASCAL VOC AP (07 11-point and 2010+ area) and COCO via pycocotools.

    from ssd.evaluation import voc_evaluate
    res = voc_evaluate(gt, dets, class_names, iou_threshold=0.5, use_07_metric=True)
    res["ap"]["dog"], res["mAP"]
    evaluate_detections(dataset, detections, "voc07")   # a data set's ground truth, same result
    evaluate_detections(dataset, detections, "coco")    # any format: AP, AP50, AP75, APs/m/l, AR
"""

from ssd.evaluation.coco import (
    COCO_STAT_NAMES,
    coco_evaluate,
    coco_numbers,
    ground_truth_to_coco,
    to_coco_results,
)
from ssd.evaluation.dataset_eval import (
    METRICS,
    check_has_images,
    detections_to_pixels,
    evaluate_detections,
    ground_truth_pixels,
)
from ssd.evaluation.plots import plot_confusion_matrix, plot_pr_curves, plot_threshold_curves
from ssd.evaluation.voc import inclusive_iou, voc_ap, voc_evaluate
from ssd.evaluation.voc_results import load_voc_results, write_voc_results

__all__ = [
    "COCO_STAT_NAMES",
    "METRICS",
    "check_has_images",
    "coco_evaluate",
    "coco_numbers",
    "detections_to_pixels",
    "evaluate_detections",
    "ground_truth_pixels",
    "ground_truth_to_coco",
    "inclusive_iou",
    "load_voc_results",
    "plot_confusion_matrix",
    "plot_pr_curves",
    "plot_threshold_curves",
    "to_coco_results",
    "voc_ap",
    "voc_evaluate",
    "write_voc_results",
]
