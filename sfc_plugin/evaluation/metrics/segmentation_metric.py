from typing import Dict, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric

from sfc_plugin.datasets.davis import read_object_mask
from sfc_plugin.registry import METRICS


def confusion_matrix(gt: np.ndarray, pred: np.ndarray,
                     num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts, rows ground truth, columns
    predictions; ids outside [0, num_classes) are ignored."""
    gt = gt.astype(np.int64).ravel()
    pred = pred.astype(np.int64).ravel()
    valid = (gt >= 0) & (gt < num_classes) & (pred >= 0) & (
        pred < num_classes)
    return np.bincount(
        gt[valid] * num_classes + pred[valid],
        minlength=num_classes**2).reshape(num_classes, num_classes)


@METRICS.register_module()
class PartIoUMetric(BaseMetric):
    """Mean IoU of propagated part maps (VIP: 19 parts + background).

    A confusion matrix is accumulated over all scored frames of the dataset
    (frames with a ground-truth annotation, frame 0 excluded by default);
    the IoU of each class is ``TP / (TP + FP + FN)``, and mIoU averages the
    classes that occur in the ground truth or the predictions.

    Args:
        num_classes (int): Class ids 0..num_classes-1, 0 the background.
            Defaults to 20.
        skip_first_frame (bool): Do not score frame 0 (given).
            Defaults to True.
        collect_device (str): 'cpu' or 'gpu'. Defaults to 'cpu'.
        prefix (str, optional): Defaults to 'vip'.
    """

    default_prefix = 'vip'

    def __init__(self, num_classes: int = 20, skip_first_frame: bool = True,
                 collect_device: str = 'cpu', prefix=None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.num_classes = num_classes
        self.skip_first_frame = skip_first_frame

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            path = sample.get('seg_map_path')
            if path is None or (self.skip_first_frame
                                and sample['frame_id'] == 0):
                continue
            gt = read_object_mask(path, sample.get('mask_format', 'auto'))
            pred = np.asarray(sample['pred_seg_map'])
            if gt.shape != pred.shape:
                raise ValueError(
                    f'PartIoUMetric: prediction {pred.shape} and ground '
                    f'truth "{path}" {gt.shape} differ in size')
            self.results.append(confusion_matrix(gt, pred, self.num_classes))

    def compute_metrics(self, results: list) -> Dict[str, float]:
        if not results:
            raise ValueError('PartIoUMetric: no annotated frame to score')
        conf = np.sum(results, axis=0).astype(np.float64)
        tp = np.diag(conf)
        union = conf.sum(0) + conf.sum(1) - tp
        present = union > 0
        iou = tp[present] / union[present]
        return {'mIoU': float(iou.mean())}
