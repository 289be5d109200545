"""DAVIS as an mmdet 3.x video dataset (imported only where mmdet works)."""
import os.path as osp
from typing import List

import numpy as np
from mmdet.datasets import BaseVideoDataset
from PIL import Image
from pycocotools import mask as mask_utils

from sfc_plugin.registry import DATASETS, building_in_scope

from .davis import davis_frame_infos, list_davis_sequences, read_object_mask


@DATASETS.register_module()
class DAVISVideoDataset(BaseVideoDataset):
    """DAVIS-2017 / DAVIS-2016 in mmdet's video-dataset form.

    What mmdet's tracking pipelines expect of a ``BaseVideoDataset``: one
    item per video (``video_id``, ``video_length``, ``images``), each frame
    with ``img_id`` (unique in the dataset), ``frame_id``, ``video_id``,
    ``img_path``, ``height`` / ``width`` and ``instances`` (``bbox`` x1 y1
    x2 y2, ``bbox_label`` 0 (class 'object'), ``mask`` as COCO RLE,
    ``instance_id`` the DAVIS object id, ``ignore_flag`` 0) for the objects
    present in its annotation, so ``TrackImgSampler``,
    ``LoadTrackAnnotations(with_mask=True)`` and ``PackTrackInputs`` work
    unchanged. Frames also carry what :class:`DAVISMetric` scores with:
    ``video`` (the sequence name), ``seg_map_path`` (None for a frame
    without annotation), ``first_seg_map_path`` and ``mask_format``.

    Its pipeline is built in mmdet's scope (``LoadTrackAnnotations``,
    ``PackTrackInputs``, ...), from whichever registry the dataset is.

    The layout, sequence lists and mask formats are those of
    :class:`DAVISDataset` (palette PNGs of ids, or DAVIS-2016's 8-bit
    {0, 255} masks with ``mask_format='auto'`` or ``'binary'``).

    Args:
        data_root (str): Root folder.
        ann_file (str): Sequence list under ``data_root``.
            Defaults to 'ImageSets/2017/val.txt'.
        data_prefix (dict): ``img_path`` and ``seg_map_path`` folders.
        mask_format (str): See :func:`read_object_mask`. Defaults to 'auto'.
        annotated_frames (str): 'all' loads every annotated frame's
            instances; 'first' only frame 0's, which is all semi-supervised
            propagation reads (the metric reads the other masks itself), at
            a fraction of the loading time. Defaults to 'all'.
        **kwargs: ``BaseVideoDataset``'s (``pipeline``, ``test_mode``, ...).
    """

    METAINFO = dict(classes=('object', ), dataset_name='DAVIS')

    def __init__(self,
                 data_root: str = '',
                 ann_file: str = 'ImageSets/2017/val.txt',
                 data_prefix: dict = dict(
                     img_path='JPEGImages/480p',
                     seg_map_path='Annotations/480p'),
                 mask_format: str = 'auto',
                 annotated_frames: str = 'all',
                 **kwargs):
        if annotated_frames not in ('all', 'first'):
            raise ValueError('DAVISVideoDataset: annotated_frames must be '
                             f"'all' or 'first', got {annotated_frames!r}")
        self.mask_format = mask_format
        self.annotated_frames = annotated_frames
        with building_in_scope('mmdet'):
            super().__init__(
                data_root=data_root,
                ann_file=ann_file,
                data_prefix=data_prefix,
                **kwargs)

    def load_data_list(self) -> List[dict]:
        # mmdet's own datasets build this from COCO-style JSON.
        self.cat_ids = [0]
        self.cat2label = {0: 0}
        self.img_ids_with_ann = set()
        data_list, img_id = [], 0
        sequences = list_davis_sequences(
            self.ann_file, self.data_prefix['img_path'],
            self.data_prefix['seg_map_path'], type(self).__name__)
        for video_id, (video, frames, ann_paths) in enumerate(sequences):
            with Image.open(frames[0]) as img:
                width, height = img.size
            images = davis_frame_infos(video, frames, ann_paths,
                                       self.mask_format)
            for info in images:
                ann = info['seg_map_path']
                load = ann is not None and (self.annotated_frames == 'all'
                                            or info['frame_id'] == 0)
                instances = self._instances(ann, (height, width)) if (
                    load) else []
                if instances:
                    self.img_ids_with_ann.add(img_id)
                info.update(
                    img_id=img_id,
                    file_name=osp.basename(info['img_path']),
                    height=height,
                    width=width,
                    video_id=video_id,
                    instances=instances)
                img_id += 1
            data_list.append(
                dict(video_id=video_id, video=video,
                     video_length=len(images), images=images))
        self.cat_img_map = {0: sorted(self.img_ids_with_ann)}
        return data_list

    def _instances(self, path: str, size: tuple) -> List[dict]:
        ids = read_object_mask(path, self.mask_format)
        if ids.shape != size:
            raise ValueError(
                f'{type(self).__name__}: annotation "{path}" is '
                f'{ids.shape[1]}x{ids.shape[0]}, its frames '
                f'{size[1]}x{size[0]}')
        instances = []
        for obj in np.unique(ids):
            if obj == 0:
                continue
            mask = ids == obj
            rows, cols = np.nonzero(mask)
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle['counts'] = rle['counts'].decode('ascii')
            instances.append(
                dict(
                    bbox=[float(cols.min()), float(rows.min()),
                          float(cols.max() + 1), float(rows.max() + 1)],
                    bbox_label=0,
                    mask=rle,
                    instance_id=int(obj),
                    ignore_flag=0))
        return instances
