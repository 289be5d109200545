from typing import Dict, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric

from sfc_plugin.registry import METRICS


def normalized_joint_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Distances of (J, 2) predictions to (J, 2) ground truth, divided by
    the larger side of the ground-truth joints' bounding box."""
    size = float(np.max(gt.max(0) - gt.min(0)))
    if size <= 0:
        raise ValueError('the ground-truth joints of a frame span no area; '
                         'PCK is undefined')
    return np.linalg.norm(pred - gt, axis=1) / size


@METRICS.register_module()
class JHMDBPCKMetric(BaseMetric):
    """PCK of propagated keypoints (JHMDB, as in CRW's evaluation).

    A joint is correct at threshold α when its distance to the ground truth
    is at most α times the larger side of the bounding box of the frame's
    ground-truth joints. Frame 0 (given) is not scored; PCK@α is the
    fraction of correct (frame, joint) pairs over the dataset.

    Args:
        thresholds (Sequence[float]): α values. Defaults to (0.1, 0.2).
        collect_device (str): 'cpu' or 'gpu'. Defaults to 'cpu'.
        prefix (str, optional): Defaults to 'jhmdb'.
    """

    default_prefix = 'jhmdb'

    def __init__(self, thresholds: Sequence[float] = (0.1, 0.2),
                 collect_device: str = 'cpu', prefix=None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.thresholds = tuple(thresholds)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            if sample['frame_id'] == 0:
                continue
            pred = np.asarray(sample['pred_joints'], dtype=np.float64)
            gt = np.asarray(sample['gt_joints'], dtype=np.float64)
            if pred.shape != gt.shape:
                raise ValueError(
                    f'JHMDBPCKMetric: {pred.shape} predicted and {gt.shape} '
                    f'ground-truth joints in "{sample.get("img_path")}"')
            self.results.append(normalized_joint_errors(pred, gt))

    def compute_metrics(self, results: list) -> Dict[str, float]:
        if not results:
            raise ValueError('JHMDBPCKMetric: no frame to score (videos of '
                             'one frame only?)')
        errors = np.concatenate(results)
        return {
            f'PCK@{t:g}': float(np.mean(errors <= t))
            for t in self.thresholds
        }
