"""Ground-truth anchors: J&F with anchors every N frames, and what an anchor
costs per frame.

    python benchmarks/anchors.py --checkpoint W/iter_100.pth \\
        --data-root ../shared/data/davis2016 --ann-file ImageSets/val.txt \\
        --intervals 10 20 40
    python benchmarks/anchors.py --cost-only

J&F: ``tools/test.py configs/fc_davis.py`` (what ``mim test`` runs) once
without anchors (the paper protocol) and once per interval N with
``test_dataloader.dataset.anchor_interval=N``; each anchored run is scored on
the frames after its first anchor, anchor frames excluded, and the masks of
the run without anchors are scored on the same frames, side by side.

Cost: one propagation step (``LabelPropagator.step``) at DAVIS 480p (a 60×107
feature grid), k = 10, r' = 12, m = 20, with 0, 1, 2, 4 and 8 anchors held:
each anchor is one more unrestricted (full-frame) key frame. Median of
``--repeats`` steps on random unit-norm features, in this process.

Prints Markdown tables.
"""
import argparse
import csv
import os.path as osp
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def run_test(args, out: str, interval=None) -> dict:
    """tools/test.py with configs/fc_davis.py; the global CSV's figures."""
    options = [
        f'test_dataloader.dataset.data_root={args.data_root}',
        f'test_dataloader.dataset.ann_file={args.ann_file}',
        f'test_evaluator.output_dir={out}', 'test_dataloader.num_workers=0'
    ]
    if interval is not None:
        options.append(f'test_dataloader.dataset.anchor_interval={interval}')
    cmd = [sys.executable, osp.join(REPO, 'tools', 'test.py'),
           osp.join(REPO, 'configs', 'fc_davis.py')]
    if args.checkpoint:
        cmd.append(args.checkpoint)
    cmd += ['--work-dir', osp.join(out, 'work'), '--cfg-options', *options]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    suffix = '' if interval is None else f'-anchors_every_{interval}'
    with open(osp.join(out, f'global_results-val{suffix}.csv')) as f:
        header, values = list(csv.reader(f))
    return dict(zip(header, map(float, values)))


def rescore(args, masks_dir: str, interval: int) -> dict:
    """The masks in ``masks_dir`` scored on the frames of the
    anchors-every-``interval`` protocol."""
    from sfc_plugin.datasets import DAVISDataset
    from sfc_plugin.evaluation.metrics import DAVISMetric
    dataset = DAVISDataset(data_root=args.data_root, ann_file=args.ann_file,
                           anchor_interval=interval)
    metric = DAVISMetric()
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        name = osp.splitext(osp.basename(info['img_path']))[0]
        pred = np.array(Image.open(
            osp.join(masks_dir, info['video'], name + '.png')))
        metric.process({}, [dict(info, pred_seg_map=pred)])
    scores = metric.evaluate(len(dataset))
    return {k.rsplit('/', 1)[-1]: v for k, v in scores.items()}


def scored_frames(args, interval=None) -> int:
    from sfc_plugin.datasets import DAVISDataset
    from sfc_plugin.evaluation.metrics.davis_metric import scored_frame
    dataset = DAVISDataset(data_root=args.data_root, ann_file=args.ann_file)
    return sum(
        scored_frame(info['frame_id'], info['video_length'], interval)
        for info in (dataset.get_data_info(i) for i in range(len(dataset))))


def jf_table(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        plain_dir = osp.join(tmp, 'plain')
        plain = run_test(args, plain_dir)
        rows = [('paper protocol (no anchors)', scored_frames(args), plain,
                 plain)]
        for interval in args.intervals:
            anchored = run_test(args, osp.join(tmp, f'every{interval}'),
                                interval)
            rows.append((f'anchors every {interval} frames',
                         scored_frames(args, interval), anchored,
                         rescore(args, plain_dir, interval)))
    print('| protocol | frames scored | J&F | J-Mean | F-Mean | J&F without '
          'anchors, same frames |')
    print('|---|---:|---:|---:|---:|---:|')
    for name, frames, scores, baseline in rows:
        print(f'| {name} | {frames} | {scores["J&F-Mean"]:.4f} | '
              f'{scores["J-Mean"]:.4f} | {scores["F-Mean"]:.4f} | '
              f'{baseline["J&F-Mean"]:.4f} |')


def cost_table(args) -> None:
    from sfc_plugin.models import LabelPropagator
    from sfc_plugin.ops import load_native_ops
    load_native_ops()
    torch.manual_seed(0)
    h, w, c, k = 60, 107, args.channels, 3

    def feat():
        return F.normalize(torch.randn(c, h, w), dim=0)

    def labels():
        return torch.softmax(torch.randn(k, h, w), 0)

    print(f'| anchors held | s/step (C = {c}) | added per anchor |')
    print('|---:|---:|---:|')
    base = None
    for anchors in (0, 1, 2, 4, 8):
        prop = LabelPropagator(topk=10, radius=12, context_frames=20,
                               temperature=0.05, max_anchors=8)
        prop.init(feat(), labels())
        for _ in range(anchors):
            prop.anchor(feat(), labels())
        query = feat()
        prop.step(query)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            prop.step(query)
            times.append(time.perf_counter() - start)
        median = float(np.median(times))
        base = median if base is None else base
        added = ((median - base) / anchors) if anchors else 0.0
        print(f'| {anchors} | {median:.3f} | '
              f'{"–" if not anchors else f"{added:.3f}"} |')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkpoint', help='FC checkpoint (else random '
                        'init)')
    parser.add_argument('--data-root',
                        default=osp.join(REPO, '..', 'shared', 'data',
                                         'davis2016'))
    parser.add_argument('--ann-file', default='ImageSets/val.txt')
    parser.add_argument('--intervals', type=int, nargs='+',
                        default=[10, 20, 40])
    parser.add_argument('--channels', type=int, default=256)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--cost-only', action='store_true')
    args = parser.parse_args()
    if not args.cost_only:
        jf_table(args)
        print()
    cost_table(args)


if __name__ == '__main__':
    main()
