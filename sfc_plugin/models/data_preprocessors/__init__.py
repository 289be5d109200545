from .multi_view import MultiViewDataPreprocessor
from .video_frame import VideoFramePreprocessor

__all__ = ['MultiViewDataPreprocessor', 'VideoFramePreprocessor']
