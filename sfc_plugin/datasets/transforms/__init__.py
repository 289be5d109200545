from .formatting import PackMultiViewInputs, PackVideoFrameInputs
from .loading import (
    LoadKeypoints,
    LoadObjectMask,
    LoadPartMap,
    LoadVideoFrame,
)
from .two_view_crop import TwoViewRandomResizedCrop, crop_box, sample_crop

__all__ = [
    'TwoViewRandomResizedCrop', 'PackMultiViewInputs', 'PackVideoFrameInputs',
    'LoadVideoFrame', 'LoadObjectMask', 'LoadPartMap', 'LoadKeypoints',
    'sample_crop', 'crop_box'
]
