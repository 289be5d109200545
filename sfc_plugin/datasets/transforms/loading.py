from typing import Optional

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine import fileio

from sfc_plugin.datasets.davis import check_label_noise, read_object_mask
from sfc_plugin.datasets.keypoints import read_keypoint_json
from sfc_plugin.datasets.utils import decode_frame
from sfc_plugin.registry import TRANSFORMS


@TRANSFORMS.register_module()
class LoadVideoFrame(BaseTransform):
    """Loads one video frame, from a frame file or as already decoded.

    Frames of a video file arrive decoded (``img``, from
    :class:`VideoFileReader`); frames of a folder arrive as ``img_path`` and
    are decoded exactly as ``mmcv.LoadImageFromFile`` decodes them, so a
    tracking run and an evaluation config see the same pixels.

    Required keys: ``img`` (H, W, 3) uint8 BGR, or ``img_path``.
    Added keys: ``img`` (when read), ``img_shape``, ``ori_shape``.

    Args:
        imdecode_backend (str): mmcv's image decoding backend.
            Defaults to 'cv2'.
    """

    def __init__(self, imdecode_backend: str = 'cv2'):
        self.imdecode_backend = imdecode_backend

    def transform(self, results: dict) -> dict:
        img = results.get('img')
        if img is None:
            path = results['img_path']
            try:
                data = fileio.get(path)
            except OSError as err:
                raise OSError(f'Cannot read frame "{path}": {err}') from err
            img = decode_frame(data, path, self.imdecode_backend)
            results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}('
                f'imdecode_backend={self.imdecode_backend!r})')


def _check_size(label: np.ndarray, path: str, results: dict) -> None:
    img_shape = results['img'].shape[:2]
    if label.shape != img_shape:
        raise ValueError(
            f'Annotation "{path}" is {label.shape[1]}×{label.shape[0]} but '
            f'frame "{results.get("img_path")}" is '
            f'{img_shape[1]}×{img_shape[0]}')


@TRANSFORMS.register_module()
class LoadObjectMask(BaseTransform):
    """Loads a frame's object-id annotation (DAVIS palette or binary PNG).

    Labels that cannot be what an annotator meant are refused, naming the
    file: lossy formats, ids above 255, and id maps that look like
    compression noise (:func:`check_label_noise`).

    Required keys: ``seg_map_path`` (may be None), ``frame_id``, ``img``.
    Optional keys: ``mask_format`` (default 'auto').
    Added keys: ``gt_seg_map`` (H, W) uint8 object ids.

    Args:
        first_frame_only (bool): Load only the annotations a tracker
            consumes: frame 0's and anchor frames' (``anchor`` key); the
            metric reads the others from disk. Defaults to True.
    """

    def __init__(self, first_frame_only: bool = True):
        self.first_frame_only = first_frame_only

    def read(self, path: str, results: dict) -> np.ndarray:
        """The (H, W) uint8 id map of the file at ``path``."""
        return read_object_mask(path, results.get('mask_format', 'auto'))

    def transform(self, results: dict) -> dict:
        if self.first_frame_only and not _labels_consumed(results):
            return results
        path = results.get('seg_map_path')
        if path is None:
            return results
        mask = self.read(path, results)
        _check_size(mask, path, results)
        check_label_noise(mask, path)
        results['gt_seg_map'] = mask
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}('
                f'first_frame_only={self.first_frame_only})')


@TRANSFORMS.register_module()
class LoadPartMap(LoadObjectMask):
    """Loads a frame's part map: class ids, 0 for background (VIP).

    Unlike object masks, values are class ids as they are, never read as a
    binary {0, 255} mask, and every id must be below ``num_classes``.

    Required keys: ``seg_map_path`` (may be None), ``frame_id``, ``img``.
    Added keys: ``gt_seg_map`` (H, W) uint8 class ids.

    Args:
        num_classes (int): Classes, background included (VIP: 20).
        first_frame_only (bool): See :class:`LoadObjectMask`.
            Defaults to True.
    """

    def __init__(self, num_classes: int, first_frame_only: bool = True):
        super().__init__(first_frame_only)
        if not 2 <= int(num_classes) <= 256:
            raise ValueError('LoadPartMap: num_classes must be in [2, 256], '
                             f'got {num_classes}')
        self.num_classes = int(num_classes)

    def read(self, path: str, results: dict) -> np.ndarray:
        parts = read_object_mask(path, 'palette')
        if int(parts.max()) >= self.num_classes:
            raise ValueError(
                f'Part map "{path}" holds class id {int(parts.max())}; '
                f'num_classes={self.num_classes} allows 0 to '
                f'{self.num_classes - 1}')
        return parts

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(num_classes={self.num_classes}, '
                f'first_frame_only={self.first_frame_only})')


@TRANSFORMS.register_module()
class LoadKeypoints(BaseTransform):
    """Loads a frame's keypoints from a JSON file (:func:`read_keypoint_json`).

    Datasets that hold the keypoints already (``gt_joints``, JHMDB) need no
    loading; this transform serves files given with a video.

    Required keys: ``joints_path`` (may be absent or None), ``frame_id``,
    ``img``.
    Added keys: ``gt_joints`` (J, 2) float32 (x, y) pixel coordinates.

    Args:
        first_frame_only (bool): Load only frame 0's and anchor frames'
            keypoints. Defaults to True.
    """

    def __init__(self, first_frame_only: bool = True):
        self.first_frame_only = first_frame_only

    def transform(self, results: dict) -> dict:
        if self.first_frame_only and not _labels_consumed(results):
            return results
        path: Optional[str] = results.get('joints_path')
        if path is None:
            return results
        results['gt_joints'] = read_keypoint_json(
            path, results['img'].shape[:2])
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}('
                f'first_frame_only={self.first_frame_only})')


def _labels_consumed(results: dict) -> bool:
    """Whether a tracker takes this frame's labels: frame 0's start the
    video, an anchor frame's replace its prediction."""
    return results.get('frame_id', 0) == 0 or bool(results.get('anchor'))


__all__ = ['LoadVideoFrame', 'LoadObjectMask', 'LoadPartMap', 'LoadKeypoints']
