from .formatting import PackMultiViewInputs
from .two_view_crop import TwoViewRandomResizedCrop, crop_box, sample_crop

__all__ = [
    'TwoViewRandomResizedCrop', 'PackMultiViewInputs', 'sample_crop',
    'crop_box'
]
