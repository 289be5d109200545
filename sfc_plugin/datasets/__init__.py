from .davis import DAVISDataset, VIPDataset, read_object_mask
from .frame_dataset import FrameDataset
from .jhmdb import JHMDBDataset, read_joint_positions
from .samplers import VideoSampler
from .synthetic_frame_dataset import SyntheticFrameDataset, synthetic_frame
from .transforms import *  # noqa: F401,F403
from .video_frame_dataset import VideoFrameDataset

__all__ = [
    'FrameDataset', 'SyntheticFrameDataset', 'synthetic_frame',
    'VideoFrameDataset', 'DAVISDataset', 'VIPDataset', 'JHMDBDataset',
    'read_object_mask', 'read_joint_positions', 'VideoSampler'
]
