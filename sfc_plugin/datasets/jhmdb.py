import os
import os.path as osp
from typing import List

import numpy as np

from sfc_plugin.registry import DATASETS

from .utils import is_image_file, read_list_file
from .video_frame_dataset import VideoFrameDataset


def read_joint_positions(path: str) -> np.ndarray:
    """JHMDB ``joint_positions.mat`` → (T, J, 2) float32 (x, y), 0-based.

    The file's ``pos_img`` holds (2, J, T) MATLAB (1-based) pixel
    coordinates.
    """
    from scipy.io import loadmat
    try:
        mat = loadmat(path)
    except (OSError, ValueError) as err:
        raise OSError(f'Cannot read joint positions "{path}": {err}') from err
    if 'pos_img' not in mat:
        raise KeyError(f'"{path}" has no pos_img array (keys: '
                       f'{sorted(k for k in mat if not k.startswith("__"))})')
    pos = np.asarray(mat['pos_img'], dtype=np.float32)
    if pos.ndim != 3 or pos.shape[0] != 2:
        raise ValueError(f'"{path}": pos_img must be (2, J, T), got '
                         f'{pos.shape}')
    return pos.transpose(2, 1, 0) - 1.0


@DATASETS.register_module()
class JHMDBDataset(VideoFrameDataset):
    """JHMDB keypoint propagation (15 joints per frame), frame by frame.

    ``ann_file`` lists one video per line as ``<frames folder> <mat file>``
    (CRW's list format), both relative to ``data_root``; frames are the
    folder's images in name order and the mat file is JHMDB's
    ``joint_positions.mat``. Every frame item carries ``gt_joints`` (J, 2)
    in pixel coordinates of the original frame.

    Args:
        data_root (str): Root folder.
        ann_file (str): The video list. Defaults to 'jhmdb_val.txt'.
        pipeline (list): Transforms. Defaults to [].
    """

    METAINFO = dict(dataset_name='JHMDB')

    def __init__(self, data_root: str = '', ann_file: str = 'jhmdb_val.txt',
                 pipeline=(), **kwargs):
        super().__init__(
            data_root=data_root, ann_file=ann_file, pipeline=list(pipeline),
            **kwargs)

    def load_data_list(self) -> List[dict]:
        lines = read_list_file(self.ann_file, 'JHMDBDataset', 'video list')
        data_list = []
        for n, parts in enumerate((line.split() for line in lines),
                                  start=1):
            if len(parts) != 2:
                raise ValueError(
                    f'JHMDBDataset: line {n} of "{self.ann_file}" must be '
                    '"<frames folder> <joint_positions.mat>"')
            frame_dir, mat = (osp.join(self.data_root, p) for p in parts)
            if not osp.isdir(frame_dir):
                raise FileNotFoundError(
                    f'JHMDBDataset: frames folder not found: "{frame_dir}"')
            frames = sorted(
                x for x in os.listdir(frame_dir) if is_image_file(x))
            joints = read_joint_positions(mat)
            if len(joints) < len(frames):
                raise ValueError(
                    f'JHMDBDataset: "{mat}" has joints for {len(joints)} '
                    f'frames, "{frame_dir}" holds {len(frames)}')
            video = parts[0].rstrip('/')
            for i, frame in enumerate(frames):
                data_list.append(
                    dict(
                        img_path=osp.join(frame_dir, frame),
                        video=video,
                        frame_id=i,
                        video_length=len(frames),
                        gt_joints=joints[i]))
        return data_list
