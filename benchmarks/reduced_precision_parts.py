"""The parts of a reduced-precision tracking frame, each beside what it
replaced, at 480p (854×480).

- ``encoder``: the FC (or SFC, ``--config sfc_davis.py``) encoder under
  autocast, as the tracker ran it before, against its
  :class:`ReducedPrecisionEncoder` copy (BatchNorms folded, weights cast
  once, the stem's max-pool without indices), both on a channels-last batch;
- ``preprocess``: mmengine's ``ImgDataPreprocessor`` against
  :class:`VideoFramePreprocessor` on a uint8 (3, H, W) frame, contiguous as
  ``tools/track.py`` packs it, and decoded as (H, W, 3) and permuted;
- ``max-pool``: ``max_pool2d`` against :class:`IndexFreeMaxPool2d` on the
  stem's bf16 channels-last activation (64 × 240 × 427).

The two sides of a row run alternately, ``--repeats`` times each after a
warm-up, in one process; the table gives their medians and the ratio, and
whether their outputs are equal (bit for bit where they must be, else the
largest difference). Random weights unless ``--checkpoint``.

    python benchmarks/reduced_precision_parts.py --checkpoint fc.pth
"""
import argparse
import os.path as osp
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)  # this checkout's sfc_plugin


def side_by_side(first, second, repeats: int):
    """Median seconds of each callable, run alternately, and their last
    outputs."""
    for _ in range(2):
        first(), second()
    times = ([], [])
    for _ in range(repeats):
        for fn, out in zip((first, second), times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times], (first(), second())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default='fc_davis.py')
    parser.add_argument('--checkpoint')
    parser.add_argument('--precision', default='bf16',
                        choices=['bf16', 'fp16'])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--repeats', type=int, default=15)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error('--repeats must be >= 1')

    from mmengine.model import ImgDataPreprocessor

    from sfc_plugin.apis import init_tracker, tracker_config
    from sfc_plugin.models import VideoFramePreprocessor
    from sfc_plugin.models.encoders.inference_copy import (
        IndexFreeMaxPool2d,
        ReducedPrecisionEncoder,
    )
    from sfc_plugin.models.trackers.sfc_tracker import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        channels_last_batch,
    )
    tracker = init_tracker(
        tracker_config(args.config, args.checkpoint,
                       precision=args.precision), args.device)
    dtype = tracker.PRECISIONS[args.precision]
    g = torch.Generator().manual_seed(0)
    frame = torch.randn(3, 480, 854, generator=g).to(args.device)
    rows = []
    with torch.no_grad():

        def autocast():
            with torch.autocast(frame.device.type, dtype=dtype):
                return tracker.encoder(channels_last_batch(frame)).to(dtype)

        copy = tracker._reduced_precision_encoder(tracker.encoder, dtype)
        (a, b), (x, y) = side_by_side(
            autocast, lambda: copy(channels_last_batch(frame, dtype)),
            args.repeats)
        rows.append(('encoder', 'autocast', 'folded copy', a, b,
                     f'max diff {(x.float() - y.float()).abs().max():.1e}'))

        separate = ReducedPrecisionEncoder(fuse_relus=False)(
            tracker.encoder, dtype)
        (a, b), (x, y) = side_by_side(
            lambda: separate(channels_last_batch(frame, dtype)),
            lambda: copy(channels_last_batch(frame, dtype)), args.repeats)
        rows.append(('conv + ReLU', 'separate ops', 'fused', a, b,
                     f'max diff {(x.float() - y.float()).abs().max():.1e}'))

        hwc = torch.randint(0, 256, (480, 854, 3), dtype=torch.uint8,
                            generator=g).to(args.device)
        kwargs = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, bgr_to_rgb=True)
        parent = ImgDataPreprocessor(**kwargs).to(args.device)
        ours = VideoFramePreprocessor(**kwargs).to(args.device)
        for layout, image in (
                ('CHW', hwc.permute(2, 0, 1).contiguous()),
                ('HWC permuted', hwc.permute(2, 0, 1))):
            data = dict(inputs=[image])
            (a, b), (x, y) = side_by_side(
                lambda: parent(dict(data))['inputs'],
                lambda: ours(dict(data))['inputs'], args.repeats)
            rows.append((f'preprocess, {layout}', 'ImgDataPreprocessor',
                         'VideoFramePreprocessor', a, b,
                         'equal' if torch.equal(x, y) else 'DIFFERENT'))

        stem = torch.randn(1, 64, 240, 427, generator=g).to(
            args.device, dtype).contiguous(memory_format=torch.channels_last)
        (a, b), (x, y) = side_by_side(lambda: F.max_pool2d(stem, 3, 2, 1),
                                      lambda: IndexFreeMaxPool2d()(stem),
                                      args.repeats)
        rows.append(('max-pool', 'max_pool2d', 'IndexFreeMaxPool2d', a, b,
                     'equal' if torch.equal(x, y) else 'DIFFERENT'))

    print(f'{args.config} {args.precision}, 854×480, device {args.device}, '
          f'{platform.machine()}, {torch.get_num_threads()} threads, '
          f'{time.strftime("%Y-%m-%d")}, median of {args.repeats}')
    print('| part | before | ms | now | ms | before / now | outputs |')
    print('|---|---|---:|---|---:|---:|---|')
    for part, old, new, a, b, same in rows:
        print(f'| {part} | {old} | {1e3 * a:.2f} | {new} | {1e3 * b:.2f} '
              f'| {a / b:.2f}× | {same} |')


if __name__ == '__main__':
    main()
