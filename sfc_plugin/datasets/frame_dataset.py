import os
import os.path as osp
from typing import Callable, List, Optional, Sequence, Union

from mmengine.dataset import BaseDataset

from sfc_plugin.registry import DATASETS
from sfc_plugin.utils.validation import check_integer

from .utils import IMG_EXTENSIONS, is_image_file, read_list_file


@DATASETS.register_module()
class FrameDataset(BaseDataset):
    """Individual frames of videos, sampled as independent images.

    FC pre-training treats a video dataset as an image dataset (paper §4.1):
    every item is one frame. The folder ``data_root/data_prefix['img_path']``
    is read in one of two layouts, detected from its content:

    * videos: one sub-folder of frames per video, e.g. YouTube-VOS
      (``train_all_frames/JPEGImages/<video>/<frame>.jpg``) or DAVIS
      (``JPEGImages/480p/<seq>/%05d.jpg``). ``ann_file``, when given, is a
      text file listing the videos to use, one per line (DAVIS's
      ``ImageSets/2017/train.txt``); otherwise every sub-folder is used.
    * flat: the folder holds the images themselves (``ann_file`` must be
      empty).

    Args:
        data_root (str): Root folder. Defaults to ''.
        data_prefix (dict): ``img_path``: the frame folder under
            ``data_root``. Defaults to ``dict(img_path='JPEGImages')``.
        ann_file (str): Optional video list under ``data_root``.
            Defaults to ''.
        frame_interval (int): Keep every ``frame_interval``-th frame of each
            video (1 keeps all). Defaults to 1.
        pipeline (list): Data transforms. Defaults to [].
        **kwargs: Other :class:`~mmengine.dataset.BaseDataset` arguments.

    Raises:
        FileNotFoundError: The frame folder, the video list or a listed
            video does not exist.
        ValueError: No frames are found, or the layout is mixed.
    """

    def __init__(self,
                 data_root: str = '',
                 data_prefix: dict = dict(img_path='JPEGImages'),
                 ann_file: str = '',
                 frame_interval: int = 1,
                 pipeline: Sequence[Union[dict, Callable]] = (),
                 **kwargs):
        # int() turned 1.5 into 1 and failed on NaN with no name.
        self.frame_interval = check_integer('FrameDataset', 'frame_interval',
                                            frame_interval, low=1)
        super().__init__(
            data_root=data_root,
            data_prefix=data_prefix,
            ann_file=ann_file,
            pipeline=list(pipeline),
            **kwargs)

    def _read_video_list(self) -> Optional[List[str]]:
        if not self.ann_file:
            return None
        return read_list_file(self.ann_file, 'FrameDataset', 'video list')

    def load_data_list(self) -> List[dict]:
        img_dir = self.data_prefix.get('img_path', '')
        if not osp.isdir(img_dir):
            raise FileNotFoundError(
                f'FrameDataset: frame folder not found: "{img_dir}" (set '
                '`data_root` and `data_prefix.img_path`)')
        entries = sorted(os.listdir(img_dir))
        images = [e for e in entries if is_image_file(e)]
        videos = [e for e in entries if osp.isdir(osp.join(img_dir, e))]
        listed = self._read_video_list()

        if images and (videos or listed is not None):
            raise ValueError(
                f'FrameDataset: "{img_dir}" holds both images and '
                'sub-folders (or an ann_file was given for a flat folder); '
                'use either one folder per video or a flat image folder')
        if images:
            paths = [osp.join(img_dir, e) for e in images]
            data_list = [dict(img_path=p, video='') for p in paths]
        else:
            data_list = []
            for video in (videos if listed is None else listed):
                video_dir = osp.join(img_dir, video)
                if not osp.isdir(video_dir):
                    raise FileNotFoundError(
                        f'FrameDataset: video "{video}" listed in '
                        f'"{self.ann_file}" has no folder "{video_dir}"')
                frames = sorted(f for f in os.listdir(video_dir)
                                if is_image_file(f))[::self.frame_interval]
                data_list += [
                    dict(img_path=osp.join(video_dir, f), video=video)
                    for f in frames
                ]
        if not data_list:
            raise ValueError(
                f'FrameDataset: no frames ({"/".join(IMG_EXTENSIONS)}) found '
                f'in "{img_dir}"')
        return data_list
