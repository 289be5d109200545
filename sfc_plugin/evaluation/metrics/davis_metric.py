import csv
import io
import os
import os.path as osp
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger

from sfc_plugin.datasets.davis import (
    first_frame_object_count,
    read_object_mask,
)
from sfc_plugin.registry import METRICS
from sfc_plugin.utils.fileio import save_palette_png, write_text

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

    Results are processed frame by frame, so memory does not grow with the
    video length. With ``output_dir`` the predicted masks are written in the
    official results format (``<output_dir>/<video>/<frame>.png``, palette),
    together with ``per-sequence_results-<split>.csv`` and
    ``global_results-<split>.csv`` like the toolkit's; the global CSV is
    written last, so its presence marks a complete result.

    Args:
        output_dir (str, optional): Where to write masks and CSVs.
        split (str): Name used in the CSV file names. Defaults to 'val'.
        bound_th (float): Boundary tolerance. Defaults to 0.008.
        collect_device (str): 'cpu' or 'gpu'. Defaults to 'cpu'.
        prefix (str, optional): Metric name prefix. Defaults to 'davis'.
    """

    default_prefix = 'davis'

    def __init__(self,
                 output_dir: Optional[str] = None,
                 split: str = 'val',
                 bound_th: float = 0.008,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.output_dir = output_dir
        self.split = split
        self.bound_th = bound_th
        self._num_objects: Dict[str, int] = {}

    def _objects(self, meta: dict) -> int:
        video = meta['video']
        if video not in self._num_objects:
            self._num_objects[video] = first_frame_object_count(
                meta['first_seg_map_path'], meta.get('mask_format', 'auto'))
        return self._num_objects[video]

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            pred = np.asarray(sample['pred_seg_map'])
            video, frame_id = sample['video'], sample['frame_id']
            if self.output_dir is not None:
                name = osp.splitext(osp.basename(sample['img_path']))[0]
                save_palette_png(
                    pred, osp.join(self.output_dir, video, name + '.png'))
            num_objects = self._objects(sample)
            scored = 0 < frame_id < sample['video_length'] - 1
            record = dict(video=video, frame_id=frame_id,
                          num_objects=num_objects, j=None, f=None)
            if scored and num_objects:
                path = sample.get('seg_map_path')
                if path is None:
                    raise FileNotFoundError(
                        f'DAVISMetric: frame {frame_id} of "{video}" has no '
                        'ground-truth annotation to score against')
                gt = read_object_mask(path, sample.get('mask_format', 'auto'))
                if gt.shape != pred.shape:
                    raise ValueError(
                        f'DAVISMetric: prediction {pred.shape} and ground '
                        f'truth "{path}" {gt.shape} differ in size')
                ids = np.arange(1, num_objects + 1)[:, None, None]
                gt_objs, pred_objs = gt[None] == ids, pred[None] == ids
                record['j'] = region_similarity(gt_objs, pred_objs)
                record['f'] = np.array([
                    boundary_f_measure(g, p, self.bound_th)
                    for g, p in zip(gt_objs, pred_objs)
                ])
            self.results.append(record)

    def compute_metrics(self, results: list) -> Dict[str, float]:
        logger = MMLogger.get_current_instance()
        per_video = defaultdict(list)
        for r in results:
            per_video[r['video']].append(r)
        rows, j_stats, f_stats = [], [], []
        for video in sorted(per_video):
            frames = sorted((r for r in per_video[video] if r['j'] is not
                             None), key=lambda r: r['frame_id'])
            if not frames:
                logger.warning(
                    f'DAVISMetric: video "{video}" has no scored frame (no '
                    'object in its first frame, or fewer than 3 frames); it '
                    'is left out')
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
        if self.output_dir is not None:
            os.makedirs(self.output_dir, exist_ok=True)
            _write_csv(
                osp.join(self.output_dir,
                         f'per-sequence_results-{self.split}.csv'),
                ['Sequence', 'J-Mean', 'F-Mean'],
                [[n, f'{j:.6f}', f'{f:.6f}'] for n, j, f in rows])
            _write_csv(
                osp.join(self.output_dir,
                         f'global_results-{self.split}.csv'), list(metrics),
                [[f'{v:.6f}' for v in metrics.values()]])
        self._num_objects.clear()
        return metrics
