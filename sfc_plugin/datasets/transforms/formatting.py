from typing import Sequence

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.structures import BaseDataElement

from sfc_plugin.registry import TRANSFORMS


@TRANSFORMS.register_module()
class PackMultiViewInputs(BaseTransform):
    """Packs the views of one image and their boxes for the model.

    Required keys: ``img`` (V, H, W, C) array of views, ``crop_boxes`` (V, 4).
    Output: ``inputs`` a (V, C, H, W) tensor of the image's dtype, and
    ``data_samples`` a :class:`~mmengine.structures.BaseDataElement` with the
    field ``crop_boxes`` (V, 4) float32 and the meta keys in ``meta_keys``
    that the results hold.

    Args:
        meta_keys (Sequence[str]): Meta information to keep.
            Defaults to ('img_path', 'video', 'ori_shape', 'img_shape',
            'flip', 'sample_idx').
    """

    def __init__(self,
                 meta_keys: Sequence[str] = ('img_path', 'video', 'ori_shape',
                                             'img_shape', 'flip',
                                             'sample_idx')):
        self.meta_keys = tuple(meta_keys)

    def transform(self, results: dict) -> dict:
        img = results['img']
        if not isinstance(img, np.ndarray) or img.ndim != 4:
            raise ValueError(
                'PackMultiViewInputs: expected `img` as a (V, H, W, C) array '
                'of views (from TwoViewRandomResizedCrop), got '
                f'{getattr(img, "shape", type(img).__name__)}')
        inputs = torch.from_numpy(np.ascontiguousarray(
            img.transpose(0, 3, 1, 2)))
        sample = BaseDataElement(metainfo={
            k: results[k] for k in self.meta_keys if k in results})
        sample.crop_boxes = torch.as_tensor(
            results['crop_boxes'], dtype=torch.float32)
        return dict(inputs=inputs, data_samples=sample)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(meta_keys={self.meta_keys})'


@TRANSFORMS.register_module()
class PackVideoFrameInputs(BaseTransform):
    """Packs one video frame for a tracker.

    Output: ``inputs`` a (3, H, W) tensor of the image's dtype, and
    ``data_samples`` a :class:`~mmengine.structures.BaseDataElement` with the
    meta keys in ``meta_keys`` and, where present, ``gt_seg_map`` (H, W)
    uint8 object ids and ``gt_joints`` (J, 2) float32 keypoints.

    Args:
        meta_keys (Sequence[str]): Meta information to keep.
    """

    def __init__(self,
                 meta_keys: Sequence[str] = ('img_path', 'seg_map_path',
                                             'first_seg_map_path',
                                             'mask_format', 'video',
                                             'frame_id', 'frame_name',
                                             'video_length',
                                             'ori_shape', 'img_shape',
                                             'scale_factor', 'anchor',
                                             'anchor_complete',
                                             'anchor_interval')):
        self.meta_keys = tuple(meta_keys)

    def transform(self, results: dict) -> dict:
        img = results['img']
        if img.ndim == 2:
            img = img[..., None]
        inputs = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0,
                                                                     1)))
        sample = BaseDataElement(metainfo={
            k: results[k] for k in self.meta_keys if k in results})
        if 'gt_seg_map' in results:
            sample.gt_seg_map = torch.from_numpy(results['gt_seg_map'])
        if 'gt_joints' in results:
            sample.gt_joints = torch.as_tensor(
                results['gt_joints'], dtype=torch.float32)
        return dict(inputs=inputs, data_samples=sample)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(meta_keys={self.meta_keys})'
