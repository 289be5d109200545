import math
from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from mmcv.transforms import BaseTransform

from sfc_plugin.registry import TRANSFORMS
from sfc_plugin.utils.validation import check_integer, check_real

_INTERPOLATIONS = dict(
    nearest=cv2.INTER_NEAREST, bilinear=cv2.INTER_LINEAR,
    bicubic=cv2.INTER_CUBIC)


def sample_crop(height: int,
                width: int,
                scale: Tuple[float, float],
                ratio: Tuple[float, float],
                max_attempts: int = 10,
                rng: Optional[np.random.Generator] = None
                ) -> Tuple[int, int, int, int]:
    """Draws a random-resized-crop window ``(top, left, h, w)``.

    The area is drawn uniformly from ``scale`` times the image area and the
    aspect ratio log-uniformly from ``ratio``; a draw that does not fit is
    redrawn, and after ``max_attempts`` failures the largest centred window
    with an aspect ratio in ``ratio`` is used.
    """
    uniform = np.random.uniform if rng is None else rng.uniform
    integers = np.random.randint if rng is None else rng.integers
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(max_attempts):
        target_area = area * uniform(scale[0], scale[1])
        aspect = math.exp(uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(integers(0, height - h + 1))
            left = int(integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def crop_box(top: int, left: int, h: int, w: int, height: int,
             width: int) -> np.ndarray:
    """The window's normalised box ``(x1, y1, x2, y2)``.

    ``x1 = left/(W-1)``, ``x2 = (left+w-1)/(W-1)`` and likewise for y: the
    positions of the first and last pixel centres.
    """
    return np.array([
        left / (width - 1), top / (height - 1), (left + w - 1) / (width - 1),
        (top + h - 1) / (height - 1)
    ], dtype=np.float32)


@TRANSFORMS.register_module()
class TwoViewRandomResizedCrop(BaseTransform):
    """Two independent random resized crops of one image, with their boxes.

    The only augmentation of FC pre-training (paper appendix A.1): each view
    is a random crop with area in ``scale`` of the image and aspect ratio in
    ``ratio``, resized to ``size``; optionally flipped horizontally, in which
    case its box is flipped too (``x1`` and ``x2`` swap, so the box still maps
    the view's columns to image columns, right to left).

    Required keys: ``img`` (H, W, C).
    Modified keys: ``img`` becomes a (2, size, size, C) array; ``img_shape``.
    Added keys: ``crop_boxes`` (2, 4) float32 normalised boxes
    ``(x1, y1, x2, y2)``; ``flip`` (2,) bool.

    Args:
        size (int | tuple[int, int]): Output (height, width) or one side.
            Defaults to 256.
        scale (tuple[float, float]): Area range. Defaults to (0.0, 1.0).
        ratio (tuple[float, float]): Aspect-ratio (w / h) range.
            Defaults to (3/4, 4/3).
        flip_prob (float): Probability of flipping each view. Defaults to 0.
        max_attempts (int): Draws before the centre-crop fallback.
            Defaults to 10.
        interpolation (str): 'nearest', 'bilinear' or 'bicubic' for
            enlarging; shrinking uses area averaging to avoid aliasing.
            Defaults to 'bilinear'.
    """

    #: Largest side of a view.
    MAX_SIZE = 4096

    def __init__(self,
                 size: Union[int, Sequence[int]] = 256,
                 scale: Tuple[float, float] = (0.0, 1.0),
                 ratio: Tuple[float, float] = (3. / 4., 4. / 3.),
                 flip_prob: float = 0.0,
                 max_attempts: int = 10,
                 interpolation: str = 'bilinear'):
        owner = 'TwoViewRandomResizedCrop'
        if isinstance(size, int):
            pair = (size, size)
        elif isinstance(size, (tuple, list)):
            pair = tuple(size)
        else:
            pair = ()
        if len(pair) != 2:
            raise ValueError(f'{owner}: size must be an int or (h, w), got '
                             f'{size!r}')
        # Crops are the training batch: 96 pairs of 4096² views already
        # take 19 GB.
        size = tuple(
            check_integer(owner, 'size', side, 1, self.MAX_SIZE)
            for side in pair)
        max_attempts = check_integer(owner, 'max_attempts', max_attempts, 0,
                                     1000)
        scale, ratio = (self._pair(owner, name, value)
                        for name, value in (('scale', scale),
                                            ('ratio', ratio)))
        if not 0.0 <= scale[0] <= scale[1] <= 1.0:
            raise ValueError('TwoViewRandomResizedCrop: need 0 <= scale[0] <= '
                             f'scale[1] <= 1, got {scale}')
        # An infinite ratio overflowed math.exp in the crop's sampling.
        if not 0.0 < ratio[0] <= ratio[1] < math.inf:
            raise ValueError('TwoViewRandomResizedCrop: need 0 < ratio[0] <= '
                             f'ratio[1], finite, got {ratio}')
        flip_prob = check_real(owner, 'flip_prob', flip_prob)
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError('TwoViewRandomResizedCrop: flip_prob must be in '
                             f'[0, 1], got {flip_prob}')
        if interpolation not in _INTERPOLATIONS:
            raise ValueError('TwoViewRandomResizedCrop: interpolation must be '
                             f'one of {sorted(_INTERPOLATIONS)}, got '
                             f'{interpolation!r}')
        self.size = size
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.flip_prob = flip_prob
        self.max_attempts = max_attempts
        self.interpolation = interpolation

    def _view(self, img: np.ndarray) -> Tuple[np.ndarray, np.ndarray, bool]:
        height, width = img.shape[:2]
        top, left, h, w = sample_crop(height, width, self.scale, self.ratio,
                                      self.max_attempts)
        out_h, out_w = self.size
        shrink = h > out_h or w > out_w
        crop = cv2.resize(
            img[top:top + h, left:left + w], (out_w, out_h),
            interpolation=cv2.INTER_AREA
            if shrink else _INTERPOLATIONS[self.interpolation])
        if crop.ndim == 2:
            crop = crop[..., None]
        box = crop_box(top, left, h, w, height, width)
        flip = bool(np.random.rand() < self.flip_prob)
        if flip:
            crop = crop[:, ::-1]
            box = box[[2, 1, 0, 3]]
        return np.ascontiguousarray(crop), box, flip

    @staticmethod
    def _pair(owner: str, name: str, value) -> Tuple[float, float]:
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise ValueError(f'{owner}: {name} must be two numbers (low, '
                             f'high), got {value!r}')
        return tuple(check_real(owner, f'{name}[{i}]', v)
                     for i, v in enumerate(value))

    def transform(self, results: dict) -> dict:
        img = results['img']
        if img.ndim not in (2, 3) or min(img.shape[:2]) < 2:
            raise ValueError(
                'TwoViewRandomResizedCrop: image '
                f'"{results.get("img_path", "?")}" has shape {img.shape}; '
                'need at least 2×2 pixels')
        views = [self._view(img) for _ in range(2)]
        results['img'] = np.stack([v[0] for v in views])
        results['crop_boxes'] = np.stack([v[1] for v in views])
        results['flip'] = np.array([v[2] for v in views])
        results['img_shape'] = self.size
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(size={self.size}, scale={self.scale}'
                f', ratio={self.ratio}, flip_prob={self.flip_prob}, '
                f'max_attempts={self.max_attempts}, '
                f'interpolation={self.interpolation!r})')
