from .formatting import PackMultiViewInputs, PackVideoFrameInputs
from .loading import LoadObjectMask
from .two_view_crop import TwoViewRandomResizedCrop, crop_box, sample_crop

__all__ = [
    'TwoViewRandomResizedCrop', 'PackMultiViewInputs', 'PackVideoFrameInputs',
    'LoadObjectMask', 'sample_crop', 'crop_box'
]
