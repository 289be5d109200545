from mmcv.transforms import BaseTransform

from sfc_plugin.datasets.davis import read_object_mask
from sfc_plugin.registry import TRANSFORMS


@TRANSFORMS.register_module()
class LoadObjectMask(BaseTransform):
    """Loads a frame's object-id annotation (DAVIS palette or binary PNG).

    Required keys: ``seg_map_path`` (may be None), ``frame_id``, ``img``.
    Optional keys: ``mask_format`` (default 'auto').
    Added keys: ``gt_seg_map`` (H, W) uint8 object ids.

    Args:
        first_frame_only (bool): Load only frame 0's annotation, the one a
            tracker consumes (the metric reads the others from disk).
            Defaults to True.
    """

    def __init__(self, first_frame_only: bool = True):
        self.first_frame_only = first_frame_only

    def transform(self, results: dict) -> dict:
        if self.first_frame_only and results.get('frame_id', 0) != 0:
            return results
        path = results.get('seg_map_path')
        if path is None:
            return results
        mask = read_object_mask(path, results.get('mask_format', 'auto'))
        img_shape = results['img'].shape[:2]
        if mask.shape != img_shape:
            raise ValueError(
                f'Annotation "{path}" is {mask.shape[1]}×{mask.shape[0]} but '
                f'frame "{results.get("img_path")}" is '
                f'{img_shape[1]}×{img_shape[0]}')
        results['gt_seg_map'] = mask
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}('
                f'first_frame_only={self.first_frame_only})')


__all__ = ['LoadObjectMask']
