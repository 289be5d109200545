from .first_frame_detector import FirstFrameDetector
from .label_codecs import KeypointCodec, MaskCodec
from .sfc_tracker import SFCTracker

__all__ = ['SFCTracker', 'MaskCodec', 'KeypointCodec', 'FirstFrameDetector']
