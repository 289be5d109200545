from .video_sampler import VideoSampler

__all__ = ['VideoSampler']
