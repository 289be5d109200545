from typing import Callable, List, Sequence, Tuple, Union

import cv2
import numpy as np
from mmengine.dataset import BaseDataset

from sfc_plugin.registry import DATASETS
from sfc_plugin.utils.validation import check_integer


def synthetic_frame(seed: int, size: Tuple[int, int]) -> np.ndarray:
    """A reproducible textured BGR frame: shapes over a gradient and noise.

    Args:
        seed (int): Frames with the same seed and size are identical.
        size (tuple[int, int]): (height, width).

    Returns:
        np.ndarray: (height, width, 3) uint8 image.
    """
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, (2, 3))
    t = (xx / max(w - 1, 1))[..., None]
    img = (c0 * (1 - t) + c1 * t).astype(np.float32)
    for _ in range(int(rng.integers(4, 10))):
        color = tuple(float(c) for c in rng.uniform(0, 255, 3))
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if rng.random() < 0.5:
            axes = (int(rng.integers(4, max(w // 4, 5))),
                    int(rng.integers(4, max(h // 4, 5))))
            cv2.ellipse(img, center, axes, float(rng.uniform(0, 180)), 0, 360,
                        color, -1)
        else:
            corner = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.rectangle(img, center, corner, color, -1)
    img += rng.normal(0, 8, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


@DATASETS.register_module()
class SyntheticFrameDataset(BaseDataset):
    """Generated frames, for runs that must work without any dataset.

    Each item is a frame drawn by :func:`synthetic_frame` with seed
    ``seed + index``; it enters the pipeline already decoded (``img``), so
    the pipeline has no loading step.

    Frames are made when read: the dataset holds no list of them, so its
    length costs no memory.

    Args:
        num_frames (int): Dataset length, 1 to :attr:`MAX_FRAMES`.
            Defaults to 256.
        img_size (tuple[int, int]): (height, width), each 2 to
            :attr:`MAX_SIDE`. Defaults to (240, 320).
        seed (int): Base seed. Defaults to 0.
        pipeline (list): Data transforms. Defaults to [].
    """

    #: Largest side of a generated frame (drawing one takes about 60 bytes
    #: a pixel of peak RSS, measured at 4096²: 4 GiB at this size).
    MAX_SIDE = 8192
    #: Most frames: a shuffling sampler holds a permutation of them (80 MB
    #: here), YouTube-VOS has 0.6 million.
    MAX_FRAMES = 10**7

    def __init__(self,
                 num_frames: int = 256,
                 img_size: Tuple[int, int] = (240, 320),
                 seed: int = 0,
                 pipeline: Sequence[Union[dict, Callable]] = (),
                 **kwargs):
        owner = 'SyntheticFrameDataset'
        self.num_frames = check_integer(owner, 'num_frames', num_frames,
                                        low=1,
                                        high=self.MAX_FRAMES)
        if not isinstance(img_size, (tuple, list)) or len(img_size) != 2:
            raise ValueError(f'{owner}: img_size must be (height, width), '
                             f'got {img_size!r}')
        self.img_size = tuple(
            check_integer(owner, f'img_size[{i}]', side, low=2,
                          high=self.MAX_SIDE)
            for i, side in enumerate(img_size))
        self.seed = check_integer(owner, 'seed', seed, low=0)
        kwargs['serialize_data'] = False
        super().__init__(pipeline=list(pipeline), **kwargs)

    def load_data_list(self) -> List[dict]:
        return []

    def __len__(self) -> int:
        return self.num_frames

    def get_data_info(self, idx: int) -> dict:
        if not -self.num_frames <= idx < self.num_frames:
            raise IndexError(f'SyntheticFrameDataset: index {idx} out of '
                             f'range for {self.num_frames} frames')
        idx %= self.num_frames
        img = synthetic_frame(self.seed + idx, self.img_size)
        return dict(img_path=f'synthetic/{idx:06d}.png', video='synthetic',
                    sample_idx=idx, img=img, img_shape=img.shape[:2],
                    ori_shape=img.shape[:2])
