import os
import os.path as osp
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from sfc_plugin.registry import DATASETS
from sfc_plugin.utils.validation import check_integer

from .utils import IMAGE_READ_ERRORS, is_image_file, read_list_file
from .video_frame_dataset import VideoFrameDataset

#: Image formats whose compression changes pixel values: ids read from them
#: are noise around every boundary.
LOSSY_FORMATS = ('JPEG', 'MPO', 'JPEG2000', 'WEBP')
#: Largest object id an annotation may hold (results are 8-bit palette
#: PNGs, DAVIS's format).
MAX_OBJECT_ID = 255


def read_object_mask(path: str,
                     mask_format: str = 'auto',
                     what: str = 'Annotation') -> np.ndarray:
    """Reads a DAVIS annotation (or a result in its format) as an (H, W)
    uint8 map of object ids.

    Args:
        path (str): PNG file.
        mask_format (str): 'palette' (DAVIS-2017: pixel values are object
            ids), 'binary' (DAVIS-2016: 8-bit {0, 255}, one object) or 'auto'
            (palette images as ids; grey images holding only 0 and 255 as
            binary, other grey images as ids). Defaults to 'auto'.
        what (str): What the file is, in messages. Defaults to
            'Annotation'.

    Returns:
        np.ndarray: (H, W) uint8, 0 for background.

    Raises:
        OSError: The file cannot be read as an image.
        ValueError: A colour image, a lossy format (JPEG, WebP: their
            compression turns ids into noise), or ids above 255.
    """
    path = os.fspath(path)
    if mask_format not in ('auto', 'palette', 'binary'):
        raise ValueError('mask_format must be auto, palette or binary, got '
                         f'{mask_format!r}')
    try:
        with Image.open(path) as img:
            mode, file_format = img.mode, img.format
            arr = np.array(img)
    except IMAGE_READ_ERRORS as err:
        raise OSError(f'Cannot read {what.lower()} "{path}": {err}') from err
    if file_format in LOSSY_FORMATS:
        raise ValueError(
            f'{what} "{path}" is a {file_format} file: lossy compression '
            'turns object ids into noise along every boundary; save the '
            'labels as PNG')
    if arr.ndim == 3:
        raise ValueError(f'{what} "{path}" is a colour image ({mode}); '
                         'expected a palette or 8-bit grey PNG')
    if arr.dtype.kind not in 'biu':
        raise ValueError(f'{what} "{path}" holds {arr.dtype} values ({mode}):'
                         ' object ids are integers from 0 to '
                         f'{MAX_OBJECT_ID}')
    if arr.size and int(arr.min()) < 0:
        # A cast to uint8 made -1 object 255.
        raise ValueError(f'{what} "{path}" holds id {int(arr.min())}: ids '
                         f'are from 0 to {MAX_OBJECT_ID}')
    if arr.size and int(arr.max()) > MAX_OBJECT_ID:
        raise ValueError(
            f'{what} "{path}" holds id {int(arr.max())}: ids above '
            f'{MAX_OBJECT_ID} are not supported (results are 8-bit palette '
            'PNGs, DAVIS\'s format); renumber the objects 1-255')
    binary = mask_format == 'binary' or (
        mask_format == 'auto' and mode != 'P'
        and np.isin(arr, (0, 255)).all() and arr.max() == 255)
    if binary:
        return (arr > 127).astype(np.uint8)
    return arr.astype(np.uint8)


def check_label_noise(ids: np.ndarray, path: str,
                      min_fragments: int = 4) -> None:
    """Refuses an id map whose ids look like compression noise.

    A lossy-compressed mask (a JPEG saved again as PNG) holds, besides its
    real ids, dozens of values that appear only as scattered specks along
    the boundaries. An id is a fragment when no pixel of it has all eight
    neighbours of the same id; real objects have solid interiors, noise
    does not. At least ``min_fragments`` fragments making up half the ids
    or more are refused.

    Args:
        ids (np.ndarray): (H, W) id map, 0 for background.
        path (str): The file, for the message.
        min_fragments (int): Defaults to 4.

    Raises:
        ValueError: Naming the file and some of the fragment ids.
    """
    present = set(np.unique(ids).tolist()) - {0}
    if len(present) < min_fragments or min(ids.shape) < 3:
        return
    centre = ids[1:-1, 1:-1]
    solid = np.ones(centre.shape, bool)
    h, w = ids.shape
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                solid &= ids[1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx] == centre
    fragments = sorted(present - set(np.unique(centre[solid]).tolist()))
    if len(fragments) >= min_fragments and 2 * len(fragments) >= len(
            present):
        raise ValueError(
            f'Labels "{path}": {len(fragments)} of its {len(present)} ids '
            f'(e.g. {fragments[:5]}) are scattered specks with no solid '
            'region: this looks like lossy-compression noise (a JPEG saved '
            'as PNG?); export the labels losslessly')


@DATASETS.register_module()
class DAVISDataset(VideoFrameDataset):
    """DAVIS-2017 / DAVIS-2016 videos for semi-supervised label propagation.

    Items are frames, in video order; each carries its video's name, the
    frame index, the video length and the annotation paths, so a tracker can
    start a video at ``frame_id == 0`` and stream the rest. Use
    :class:`VideoSampler` to keep videos whole across processes.

    Layout (the official one)::

        data_root/JPEGImages/480p/<seq>/%05d.jpg
        data_root/Annotations/480p/<seq>/%05d.png
        data_root/ImageSets/2017/val.txt        (ann_file: one seq per line)

    Args:
        data_root (str): Root folder.
        ann_file (str): Sequence list under ``data_root``.
            Defaults to 'ImageSets/2017/val.txt'.
        data_prefix (dict): ``img_path`` and ``seg_map_path`` folders.
        mask_format (str): See :func:`read_object_mask`. Defaults to 'auto'.
        anchor_interval (int, optional): The "human in the loop" protocol:
            every N-th frame's annotation (frames N, 2N, ...) is given to
            the tracker as an anchor (items get ``anchor=True``, and all
            items ``anchor_interval``, which :class:`DAVISMetric` scores
            apart from the paper protocol). Defaults to None (the paper
            protocol: frame 0's annotation only).
        pipeline (list): Transforms. Defaults to [].

    Raises:
        FileNotFoundError: A listed sequence has no frames folder, or its
            first frame has no annotation.
        ValueError: ``anchor_interval`` is not a positive integer.
    """

    METAINFO = dict(dataset_name='DAVIS')

    def __init__(self,
                 data_root: str = '',
                 ann_file: str = 'ImageSets/2017/val.txt',
                 data_prefix: dict = dict(
                     img_path='JPEGImages/480p',
                     seg_map_path='Annotations/480p'),
                 mask_format: str = 'auto',
                 anchor_interval: Optional[int] = None,
                 pipeline=(),
                 **kwargs):
        self.mask_format = mask_format
        if anchor_interval is not None:
            anchor_interval = check_integer(type(self).__name__,
                                            'anchor_interval',
                                            anchor_interval)
            if anchor_interval < 1:
                raise ValueError(
                    f'{type(self).__name__}: anchor_interval must be a '
                    'positive integer (frames between ground-truth '
                    f'anchors), got {anchor_interval!r}')
        self.anchor_interval = anchor_interval
        super().__init__(
            data_root=data_root,
            ann_file=ann_file,
            data_prefix=data_prefix,
            pipeline=list(pipeline),
            **kwargs)

    def load_data_list(self) -> List[dict]:
        data_list = []
        for video, frames, ann_paths in list_davis_sequences(
                self.ann_file, self.data_prefix['img_path'],
                self.data_prefix['seg_map_path'], type(self).__name__):
            for item in davis_frame_infos(video, frames, ann_paths,
                                          self.mask_format):
                i = item['frame_id']
                item['video_length'] = len(frames)
                interval = self.anchor_interval
                if interval is not None:
                    item['anchor_interval'] = interval
                    item['anchor'] = bool(i and i % interval == 0
                                          and item['seg_map_path'])
                data_list.append(item)
        return data_list


def davis_frame_infos(video: str, frames: List[str], ann_paths: List[str],
                      mask_format: str) -> List[dict]:
    """Per frame of a sequence, what a tracker and :class:`DAVISMetric`
    read of it: ``img_path``, ``seg_map_path`` (None for a frame without
    annotation), ``first_seg_map_path``, ``mask_format``, ``video`` and
    ``frame_id``. Both DAVIS datasets build their items on these."""
    return [
        dict(img_path=frame,
             seg_map_path=ann if osp.isfile(ann) else None,
             first_seg_map_path=ann_paths[0],
             mask_format=mask_format,
             video=video,
             frame_id=i)
        for i, (frame, ann) in enumerate(zip(frames, ann_paths))
    ]


def list_davis_sequences(ann_file: str, img_root: str, ann_root: str,
                         owner: str) -> List[Tuple[str, List[str],
                                                   List[str]]]:
    """The sequences of a DAVIS split: frames and annotation paths.

    Args:
        ann_file (str): Sequence list, one name per line.
        img_root (str): Folder of the sequences' frame folders.
        ann_root (str): Folder of the sequences' annotation folders.
        owner (str): Who asks, for messages.

    Returns:
        list[tuple]: Per sequence, its name, its frame paths in order and
        the annotation path of each frame (which may not exist, except the
        first frame's).

    Raises:
        FileNotFoundError: A listed sequence has no frames folder, or its
            first frame has no annotation.
        ValueError: A frames folder without frames.
    """
    sequences = []
    for video in read_list_file(ann_file, owner, 'sequence list'):
        frame_dir = osp.join(img_root, video)
        if not osp.isdir(frame_dir):
            raise FileNotFoundError(
                f'{owner}: sequence "{video}" has no frames folder '
                f'"{frame_dir}"')
        frames = sorted(f for f in os.listdir(frame_dir) if is_image_file(f))
        if not frames:
            raise ValueError(f'{owner}: no frames in "{frame_dir}"')
        ann_paths = [
            osp.join(ann_root, video, osp.splitext(f)[0] + '.png')
            for f in frames
        ]
        if not osp.isfile(ann_paths[0]):
            raise FileNotFoundError(
                f'{owner}: sequence "{video}" has no annotation for its '
                f'first frame: "{ann_paths[0]}"')
        sequences.append(
            (video, [osp.join(frame_dir, f) for f in frames], ann_paths))
    return sequences


def first_frame_object_count(path: str, mask_format: str = 'auto') -> int:
    """Objects of a video: the largest id in its first annotation."""
    return int(read_object_mask(path, mask_format).max())




@DATASETS.register_module()
class VIPDataset(DAVISDataset):
    """VIP (Video Instance-level Parsing) part-map propagation.

    The DAVIS reader with VIP's layout as defaults: frames in
    ``Images/<video>/``, class-id maps (0 background, 1..19 parts) in
    ``Annotations/Category_ids/<video>/``, videos listed in
    ``lists/val_videos.txt``. Frames without an annotation are propagated
    but not scored.
    """

    METAINFO = dict(dataset_name='VIP')

    def __init__(self,
                 data_root: str = '',
                 ann_file: str = 'lists/val_videos.txt',
                 data_prefix: dict = dict(
                     img_path='Images',
                     seg_map_path='Annotations/Category_ids'),
                 mask_format: str = 'auto',
                 pipeline=(),
                 **kwargs):
        super().__init__(
            data_root=data_root,
            ann_file=ann_file,
            data_prefix=data_prefix,
            mask_format=mask_format,
            pipeline=pipeline,
            **kwargs)
