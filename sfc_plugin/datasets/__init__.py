from .davis import DAVISDataset, read_object_mask
from .frame_dataset import FrameDataset
from .samplers import VideoSampler
from .synthetic_frame_dataset import SyntheticFrameDataset, synthetic_frame
from .transforms import *  # noqa: F401,F403

__all__ = [
    'FrameDataset', 'SyntheticFrameDataset', 'synthetic_frame',
    'DAVISDataset', 'read_object_mask', 'VideoSampler'
]
