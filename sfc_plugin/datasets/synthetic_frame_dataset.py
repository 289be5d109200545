from typing import Callable, List, Sequence, Tuple, Union

import cv2
import numpy as np
from mmengine.dataset import BaseDataset

from sfc_plugin.registry import DATASETS


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

    Args:
        num_frames (int): Dataset length. Defaults to 256.
        img_size (tuple[int, int]): (height, width). Defaults to (240, 320).
        seed (int): Base seed. Defaults to 0.
        pipeline (list): Data transforms. Defaults to [].
    """

    def __init__(self,
                 num_frames: int = 256,
                 img_size: Tuple[int, int] = (240, 320),
                 seed: int = 0,
                 pipeline: Sequence[Union[dict, Callable]] = (),
                 **kwargs):
        if num_frames < 1:
            raise ValueError('SyntheticFrameDataset: num_frames must be >= 1, '
                             f'got {num_frames}')
        if len(img_size) != 2 or min(img_size) < 2:
            raise ValueError('SyntheticFrameDataset: img_size must be '
                             f'(height, width) >= 2, got {img_size}')
        self.num_frames = num_frames
        self.img_size = tuple(img_size)
        self.seed = seed
        super().__init__(pipeline=list(pipeline), **kwargs)

    def load_data_list(self) -> List[dict]:
        return [
            dict(img_path=f'synthetic/{i:06d}.png', video='synthetic')
            for i in range(self.num_frames)
        ]

    def get_data_info(self, idx: int) -> dict:
        info = super().get_data_info(idx)
        img = synthetic_frame(self.seed + info['sample_idx'], self.img_size)
        info.update(img=img, img_shape=img.shape[:2], ori_shape=img.shape[:2])
        return info
