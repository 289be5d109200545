from .davis_metric import DAVISMetric, davis_palette, save_palette_png
from .keypoint_metric import JHMDBPCKMetric, normalized_joint_errors
from .segmentation_metric import PartIoUMetric, confusion_matrix

__all__ = [
    'DAVISMetric', 'davis_palette', 'save_palette_png', 'JHMDBPCKMetric',
    'normalized_joint_errors', 'PartIoUMetric', 'confusion_matrix'
]
