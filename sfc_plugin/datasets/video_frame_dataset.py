from typing import List

from mmengine.dataset import BaseDataset


class VideoFrameDataset(BaseDataset):
    """Base of the evaluation datasets: frames of whole videos, in order.

    Subclasses list every frame as one item with ``video``, ``frame_id`` and
    ``video_length``, the frames of a video contiguous and in order; a
    tracker starts a video at ``frame_id == 0`` and
    :class:`~sfc_plugin.datasets.VideoSampler` keeps videos whole.
    """

    def video_ranges(self) -> List[range]:
        """Dataset indices of each video, in order."""
        ranges, start = [], 0
        while start < len(self):
            length = self.get_data_info(start)['video_length']
            ranges.append(range(start, start + length))
            start += length
        return ranges
