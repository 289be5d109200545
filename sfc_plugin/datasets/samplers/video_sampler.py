from typing import Iterator, Optional

from mmengine.dist import get_dist_info
from torch.utils.data import Sampler

from sfc_plugin.registry import DATA_SAMPLERS


@DATA_SAMPLERS.register_module()
class VideoSampler(Sampler):
    """Deals whole videos to processes and yields their frames in order.

    Label propagation is sequential within a video, so a video must stay on
    one process and its frames must arrive in order; videos are dealt round
    robin to the processes of a distributed test. Nothing is padded: every
    frame is visited exactly once over all processes.

    Args:
        dataset: A dataset with ``video_ranges()`` (e.g. DAVISDataset).
        seed (int, optional): Unused; accepted for mmengine's builder.
    """

    def __init__(self, dataset, seed: Optional[int] = None):
        if not hasattr(dataset, 'video_ranges'):
            raise TypeError('VideoSampler needs a video dataset with '
                            f'video_ranges(), got {type(dataset).__name__}')
        rank, world_size = get_dist_info()
        self.indices = [
            i for video in dataset.video_ranges()[rank::world_size]
            for i in video
        ]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
