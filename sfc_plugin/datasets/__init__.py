from .davis import (
    DAVISDataset,
    VIPDataset,
    check_label_noise,
    list_davis_sequences,
    read_object_mask,
)
from .frame_dataset import FrameDataset
from .jhmdb import JHMDBDataset, read_joint_positions
from .keypoints import read_keypoint_json
from .mmdet_datasets import DAVISVideoDataset
from .samplers import VideoSampler
from .synthetic_frame_dataset import SyntheticFrameDataset, synthetic_frame
from .synthetic_video import synthetic_video, write_davis_sequences
from .transforms import *  # noqa: F401,F403
from .video_frame_dataset import VideoFrameDataset
from .video_reader import (
    FrameFolderReader,
    TruncatedVideoError,
    VideoFileReader,
    open_video,
)

__all__ = [
    'FrameDataset', 'SyntheticFrameDataset', 'synthetic_frame',
    'VideoFrameDataset', 'DAVISDataset', 'VIPDataset', 'JHMDBDataset',
    'DAVISVideoDataset', 'check_label_noise', 'list_davis_sequences',
    'read_object_mask', 'read_joint_positions',
    'read_keypoint_json',
    'VideoSampler', 'synthetic_video', 'write_davis_sequences',
    'FrameFolderReader', 'TruncatedVideoError', 'VideoFileReader',
    'open_video'
]
