import csv
import io
import math
import os
import os.path as osp
import shutil
from collections import defaultdict
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from mmengine.dist import all_reduce
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger
from scipy.optimize import linear_sum_assignment

from sfc_plugin.datasets.davis import (
    MAX_OBJECT_ID,
    first_frame_object_count,
    read_object_mask,
)
from sfc_plugin.registry import METRICS
from sfc_plugin.utils.fileio import (
    check_output_location,
    remove_file,
    replace_folder,
    save_palette_png,
    write_text,
)
from sfc_plugin.utils.validation import check_real

from ..functional import (
    boundary_f_measure,
    per_frame_statistics,
    region_similarity,
)


def _write_csv(path: str, header: Sequence[str], rows: List[list]) -> None:
    text = io.StringIO(newline='')
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, text.getvalue())


def davis_frames(data_samples: Sequence[dict]) -> Iterator[dict]:
    """The frames of a batch of results in sfc_plugin's form.

    sfc_plugin's results (one dict per frame with ``pred_seg_map``) pass
    through. mmdet's (one dict per video chunk with ``video_data_samples``,
    frames with ``pred_track_instances`` and their meta data packed by
    ``PackTrackInputs(meta_keys=('video', 'seg_map_path',
    'first_seg_map_path', 'mask_format'))``) become one dict per frame whose
    ``pred_seg_map`` paints each instance's mask with its instance id; the
    video length is ``ori_video_length`` (frame-level loading sets
    ``video_length`` to 1).

    Raises:
        KeyError: A frame without the meta data the metric needs.
        ValueError: Instance ids outside 1..255.
    """
    for sample in data_samples:
        if 'video_data_samples' not in sample:
            yield sample
            continue
        for frame in sample['video_data_samples']:
            frame = frame.to_dict() if hasattr(frame, 'to_dict') else frame
            missing = [k for k in ('video', 'img_path', 'first_seg_map_path',
                                   'frame_id', 'pred_track_instances')
                       if k not in frame]
            if missing:
                raise KeyError(
                    f'DAVISMetric: a frame of mmdet\'s tracking results lacks '
                    f'{missing}: use sfc_plugin.DAVISVideoDataset and '
                    "PackTrackInputs(meta_keys=('video', 'seg_map_path', "
                    "'first_seg_map_path', 'mask_format'))")
            instances = frame['pred_track_instances']
            masks = np.asarray(instances['masks']).astype(bool)
            ids = np.asarray(instances['instances_id']).astype(np.int64)
            if ids.size and (ids.min() < 1 or ids.max() > MAX_OBJECT_ID):
                raise ValueError(
                    f'DAVISMetric: instance ids must be DAVIS object ids '
                    f'1-{MAX_OBJECT_ID}, got {ids.tolist()}')
            shape = masks.shape[1:] if masks.ndim == 3 else tuple(
                frame.get('ori_shape', ()))[:2]
            pred = np.zeros(shape, np.uint8)
            for mask, obj in zip(masks, ids):
                pred[mask] = obj
            yield dict(
                frame,
                pred_seg_map=pred,
                video_length=frame.get('ori_video_length',
                                       frame.get('video_length')))


def scored_frame(frame_id: int, video_length: int,
                 anchor_interval: Optional[int] = None) -> bool:
    """Whether a frame is scored: not the first nor the last (the DAVIS
    protocol); with ground-truth anchors every N frames, only frames after
    the first anchor, and never an anchor frame (its labels were given)."""
    if not 0 < frame_id < video_length - 1:
        return False
    if anchor_interval is None:
        return True
    return frame_id > anchor_interval and frame_id % anchor_interval != 0


def match_objects(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """A lookup table renumbering ``pred``'s objects after ``gt``'s.

    One-to-one matching of maximal total IoU (Hungarian); predicted objects
    matched to nothing, or to an object they do not overlap, map to 0.

    Args:
        pred (np.ndarray): (H, W) uint8 predicted ids.
        gt (np.ndarray): (H, W) uint8 annotated ids.

    Returns:
        np.ndarray: (256,) uint8 table, ``table[pred]`` the renumbered map.
    """
    if pred.shape != gt.shape:
        raise ValueError(f'DAVISMetric: prediction {pred.shape} and first '
                         f'annotation {gt.shape} differ in size')
    pred_ids = np.unique(pred[pred > 0])
    gt_ids = np.unique(gt[gt > 0])
    table = np.zeros(MAX_OBJECT_ID + 1, np.uint8)
    if not (len(pred_ids) and len(gt_ids)):
        return table
    p, g = pred[None] == pred_ids[:, None, None], gt[None] == gt_ids[:,
                                                                    None,
                                                                    None]
    inter = np.einsum('phw,ghw->pg', p.astype(np.int64), g.astype(np.int64))
    union = p.sum((1, 2))[:, None] + g.sum((1, 2))[None] - inter
    iou = inter / np.maximum(union, 1)
    rows, cols = linear_sum_assignment(-iou)
    for r, c in zip(rows, cols):
        if iou[r, c] > 0:
            table[pred_ids[r]] = gt_ids[c]
    return table


@METRICS.register_module()
class DAVISMetric(BaseMetric):
    """J&F of semi-supervised video object segmentation (DAVIS protocol).

    Follows the official davis2017-evaluation toolkit: per object and frame,
    J (IoU, 1 when both masks are empty) and F (boundary F-measure with a
    tolerance of ``bound_th`` of the image diagonal); the first and the last
    frame of every video are not scored; per object the mean, the recall
    (fraction above 0.5) and the decay over the remaining frames; global
    figures are means over all objects of all videos, and
    ``J&F = (J_mean + F_mean) / 2``. The objects of a video are the ids
    1..max of its first-frame annotation.

    With ground-truth anchors every N frames (the "human in the loop"
    protocol, ``DAVISDataset(anchor_interval=N)``, recorded in each frame's
    meta data), only frames after the first anchor are scored, anchor
    frames excluded, and the figures go to files and names of their own
    (``global_results-<split>-anchors_every_<N>.csv``,
    ``anchors_every_<N>/J&F-Mean``), never into the paper protocol's.

    Results are processed frame by frame, so memory does not grow with the
    video length. Predictions come as sfc_plugin's trackers give them
    (``pred_seg_map``, an (H, W) id map, with the frame's meta data) or as
    mmdet 3.x's trackers do (``TrackDataSample`` objects whose frames hold
    ``pred_track_instances`` with ``masks`` and ``instances_id``, the
    instance ids being the DAVIS object ids; see :func:`davis_frames`).
    With ``output_dir`` the predicted masks are written in the official
    results format (``<output_dir>/<video>/<frame>.png``, palette),
    together with ``per-sequence_results-<split>.csv`` and
    ``global_results-<split>.csv`` like the toolkit's. Each video's masks
    are written to a staging folder and moved into place once its last
    frame is written, replacing those of an earlier run; the earlier run's
    CSVs are removed when the run starts and the global CSV is written
    last, so its presence marks a complete result. A video of which fewer
    frames came than its ``video_length`` is an error at :meth:`evaluate`
    (with or without ``output_dir``): its masks are not moved into place,
    and nothing is scored, since the protocol's means need every frame.

    Args:
        output_dir (str, optional): Where to write masks and CSVs.
        split (str): Name used in the CSV file names. Defaults to 'val'.
        bound_th (float): Boundary tolerance. Defaults to 0.008.
        match_first_frame (bool): For objects that do not come from the
            annotation ("detect, then propagate"): the predicted objects of
            each video's frame 0 are matched one to one to its annotated
            objects (Hungarian matching on IoU; pairs that do not overlap
            stay unmatched) and renumbered after them in every frame, before
            scoring and writing; unmatched predictions are dropped
            (background). Defaults to False (the semi-supervised protocol:
            predictions carry the annotation's ids).
        collect_device (str): 'cpu' or 'gpu'. Defaults to 'cpu'.
        prefix (str, optional): Metric name prefix. Defaults to 'davis'.
    """

    default_prefix = 'davis'

    def __init__(self,
                 output_dir: Optional[str] = None,
                 split: str = 'val',
                 bound_th: float = 0.008,
                 match_first_frame: bool = False,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        bound_th = check_real('DAVISMetric', 'bound_th', bound_th)
        if not (math.isfinite(bound_th) and bound_th >= 0):
            raise ValueError('DAVISMetric: bound_th must be a finite number '
                             '>= 0 (a fraction of the image diagonal below '
                             f'1, pixels from 1 on), got {bound_th}')
        self.output_dir = output_dir
        self.split = split
        self.bound_th = bound_th
        self.match_first_frame = match_first_frame
        self._num_objects: Dict[str, int] = {}
        # Video -> the staging folder its masks are written to.
        self._staging: Dict[str, str] = {}
        # Video -> [frames that came, its video_length].
        self._frame_counts: Dict[str, List[int]] = {}
        # Per video, predicted id -> annotated id (match_first_frame).
        self._renumbering: Dict[str, np.ndarray] = {}

    def _renumber(self, sample: dict, pred: np.ndarray) -> np.ndarray:
        video = sample['video']
        if sample['frame_id'] == 0:
            gt = read_object_mask(sample['first_seg_map_path'],
                                  sample.get('mask_format', 'auto'))
            self._renumbering[video] = match_objects(pred, gt)
        elif video not in self._renumbering:
            raise RuntimeError(
                f'DAVISMetric: match_first_frame needs frame 0 of "{video}" '
                'before its other frames')
        return self._renumbering[video][pred]

    def _start_video(self, video: str, interval: Optional[int]) -> str:
        """A staging folder for a video's masks, moved into place whole
        by :meth:`_finish_video` (an interrupted run left a folder of old
        and new frames that looked finished). The CSVs of an earlier run
        go first: only a run that got to its end writes them."""
        suffix = '' if interval is None else f'-anchors_every_{interval}'
        for kind in ('global_results', 'per-sequence_results'):
            remove_file(osp.join(self.output_dir,
                                 f'{kind}-{self.split}{suffix}.csv'))
        staging = osp.join(self.output_dir, f'.{video}.partial')
        if osp.isdir(staging):  # left by a run killed outright
            shutil.rmtree(staging)
        os.makedirs(staging)
        return staging

    def _finish_video(self, video: str) -> None:
        """Moves a video's masks into place, replacing the masks of an
        earlier run (a folder holding anything else is refused)."""
        staging = self._staging.pop(video)
        target = osp.join(self.output_dir, video)
        if osp.lexists(target):
            foreign = [n for n in os.listdir(target)
                       if not n.lower().endswith('.png')] if osp.isdir(
                           target) and not osp.islink(target) else [target]
            if foreign:
                shutil.rmtree(staging, ignore_errors=True)
                raise FileExistsError(
                    f'DAVISMetric output_dir: "{target}" is not an earlier '
                    f'result of "{video}" (it holds "{foreign[0]}"); choose '
                    'another output_dir')
        replace_folder(staging, target)

    def _objects(self, meta: dict) -> int:
        video = meta['video']
        if video not in self._num_objects:
            self._num_objects[video] = first_frame_object_count(
                meta['first_seg_map_path'], meta.get('mask_format', 'auto'))
        return self._num_objects[video]

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in davis_frames(data_samples):
            pred = np.asarray(sample['pred_seg_map'])
            if self.match_first_frame:
                pred = self._renumber(sample, pred)
            video, frame_id = sample['video'], sample['frame_id']
            counts = self._frame_counts.setdefault(
                video, [0, sample['video_length']])
            counts[0] += 1
            if self.output_dir is not None and (
                    video not in self._num_objects):
                # A video's first frame here. Whichever runner drives the
                # metric (mmdet's tools check nothing), results never go
                # over the data they score.
                check_output_location(
                    self.output_dir, {
                        f'frames of "{video}"': osp.dirname(
                            sample['img_path']),
                        f'annotations of "{video}"': osp.dirname(
                            sample['first_seg_map_path'])
                    }, 'DAVISMetric output_dir')
            if self.output_dir is not None:
                if video not in self._staging:
                    self._staging[video] = self._start_video(
                        video, sample.get('anchor_interval'))
                name = osp.splitext(osp.basename(sample['img_path']))[0]
                save_palette_png(
                    pred, osp.join(self._staging[video], name + '.png'),
                    atomic=False)
                if counts[0] == counts[1]:
                    self._finish_video(video)
            num_objects = self._objects(sample)
            interval = sample.get('anchor_interval')
            record = dict(video=video, frame_id=frame_id,
                          num_objects=num_objects, anchor_interval=interval,
                          j=None, f=None)
            scored = scored_frame(frame_id, sample['video_length'], interval)
            if scored and num_objects:
                path = sample.get('seg_map_path')
                if path is None:
                    raise FileNotFoundError(
                        f'DAVISMetric: frame {frame_id} of "{video}" has no '
                        'ground-truth annotation to score against')
                gt = read_object_mask(path, sample.get('mask_format', 'auto'))
                if gt.shape != pred.shape:
                    pred_path = sample.get('pred_seg_map_path')
                    raise ValueError(
                        'DAVISMetric: prediction '
                        + (f'"{pred_path}" ' if pred_path else '')
                        + f'{pred.shape} and ground truth "{path}" '
                        f'{gt.shape} differ in size')
                ids = np.arange(1, num_objects + 1)[:, None, None]
                gt_objs, pred_objs = gt[None] == ids, pred[None] == ids
                record['j'] = region_similarity(gt_objs, pred_objs)
                record['f'] = np.array([
                    boundary_f_measure(g, p, self.bound_th)
                    for g, p in zip(gt_objs, pred_objs)
                ])
            self.results.append(record)

    def evaluate(self, size: int) -> dict:
        # The test loop passes the dataset's length, which for a video
        # dataset (mmdet's BaseVideoDataset) counts videos, not the frames
        # recorded here; mmengine would keep only that many records. Every
        # record is a distinct frame (samplers pad nothing), so all are kept.
        short = {video: counts for video, counts in self._frame_counts.items()
                 if counts[0] != counts[1]}
        self._frame_counts = {}
        for video in list(self._staging):  # none came whole
            shutil.rmtree(self._staging.pop(video), ignore_errors=True)
        # Every process stops, or those with whole videos would wait for
        # the others in the reductions below.
        short_anywhere = torch.tensor(len(short))
        all_reduce(short_anywhere)
        if int(short_anywhere):
            named = '; '.join(f'"{video}": {came} of its {length} frames'
                              for video, (came, length) in
                              list(short.items())[:3])
            self.results.clear()
            raise RuntimeError(
                f'DAVISMetric: {int(short_anywhere)} video(s) did not come '
                'whole (' + (named or 'on another process') + '); their '
                'masks were not written and nothing is scored')
        count = torch.tensor(len(self.results))
        all_reduce(count)
        return super().evaluate(int(count))

    def compute_metrics(self, results: list) -> Dict[str, float]:
        logger = MMLogger.get_current_instance()
        intervals = {r['anchor_interval'] for r in results}
        if len(intervals) > 1:
            raise ValueError(
                'DAVISMetric: results of the paper protocol and of ground-'
                'truth anchors (anchor_interval '
                f'{sorted(i for i in intervals if i)}) are never scored '
                'together')
        interval = intervals.pop() if intervals else None
        per_video = defaultdict(list)
        for r in results:
            per_video[r['video']].append(r)
        rows, j_stats, f_stats = [], [], []
        for video in sorted(per_video):
            frames = sorted((r for r in per_video[video] if r['j'] is not
                             None), key=lambda r: r['frame_id'])
            if not frames:
                why = ('no object in its first frame, or fewer than 3 '
                       'frames') if interval is None else (
                           'no object in its first frame, or no frame after '
                           f'its first anchor (frame {interval}) but the '
                           'last and anchors')
                logger.warning(
                    f'DAVISMetric: video "{video}" has no scored frame '
                    f'({why}); it is left out')
                continue
            j = np.stack([r['j'] for r in frames], axis=1)  # (objects, T)
            f = np.stack([r['f'] for r in frames], axis=1)
            for obj in range(j.shape[0]):
                js, fs = per_frame_statistics(j[obj]), per_frame_statistics(
                    f[obj])
                j_stats.append(js)
                f_stats.append(fs)
                rows.append([f'{video}_{obj + 1}', js['mean'], fs['mean']])
        if not j_stats:
            raise ValueError('DAVISMetric: no video could be scored')

        def mean(stats, key):
            return float(np.mean([s[key] for s in stats]))

        metrics = {
            'J&F-Mean': (mean(j_stats, 'mean') + mean(f_stats, 'mean')) / 2,
            'J-Mean': mean(j_stats, 'mean'),
            'J-Recall': mean(j_stats, 'recall'),
            'J-Decay': mean(j_stats, 'decay'),
            'F-Mean': mean(f_stats, 'mean'),
            'F-Recall': mean(f_stats, 'recall'),
            'F-Decay': mean(f_stats, 'decay'),
        }
        # Anchored results go to files and names of their own, beside the
        # paper protocol's: the two are never mixed up.
        suffix = '' if interval is None else f'-anchors_every_{interval}'
        if self.output_dir is not None:
            os.makedirs(self.output_dir, exist_ok=True)
            _write_csv(
                osp.join(self.output_dir,
                         f'per-sequence_results-{self.split}{suffix}.csv'),
                ['Sequence', 'J-Mean', 'F-Mean'],
                [[n, f'{j:.6f}', f'{f:.6f}'] for n, j, f in rows])
            _write_csv(
                osp.join(self.output_dir,
                         f'global_results-{self.split}{suffix}.csv'),
                list(metrics), [[f'{v:.6f}' for v in metrics.values()]])
        self._num_objects.clear()
        self._renumbering.clear()
        if interval is not None:
            metrics = {f'anchors_every_{interval}/{k}': v
                       for k, v in metrics.items()}
        return metrics
