from .davis_metric import DAVISMetric
from .keypoint_metric import JHMDBPCKMetric, normalized_joint_errors
from .segmentation_metric import PartIoUMetric, confusion_matrix

__all__ = [
    'DAVISMetric', 'JHMDBPCKMetric',
    'normalized_joint_errors', 'PartIoUMetric', 'confusion_matrix'
]
