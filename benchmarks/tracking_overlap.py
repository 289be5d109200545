"""Frames/s of the tracking loop with 0, 1, 2 ... frames in flight.

``inference_video`` hands frame t out once ``frames_in_flight`` later frames
are queued on the device: meanwhile its prediction comes back to the host
(pinned memory, a CUDA event) and the host decodes, packs and queues the
next frames instead of waiting. With 0 the host waits for every frame
before it starts the next: the device idles while the host works, and the
host while the device does. This times the loop alone (decoding, packing,
the tracker, the predictions' way back; no result files) at each setting,
side by side in one process, the settings alternating, best of
``--repeats``, and checks that every setting gives the same predictions.
``--profile`` then profiles one more pass at the last setting
(``device_profile``): per frame, the wall time, the time the GPU is busy,
the operators the host dispatches, and the kernels that take the GPU's
time: where a frame's time goes outside the match.

    python benchmarks/tracking_overlap.py --config sfc_davis.py \
        --precision bf16 --frames 150 --device cuda
    SFC_PLUGIN_TENSOR_CORES=0 python benchmarks/tracking_overlap.py ...

``--cuda-graphs`` runs the encoder as a replayed CUDA graph
(``model.cuda_graphs``; bf16 or fp16).
"""
import argparse
import hashlib
import os.path as osp
import sys
import tempfile
import time

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, osp.dirname(HERE))  # this checkout's sfc_plugin

import torch  # noqa: E402
from device_profile import (  # noqa: E402
    device_profile,
    print_host_op_table,
    print_kernel_table,
)
from track_video import tracking_source  # noqa: E402

from sfc_plugin.apis import (  # noqa: E402
    inference_video,
    init_tracker,
    tracker_config,
)
from sfc_plugin.datasets import open_video  # noqa: E402
from sfc_plugin.ops import load_native_ops, matching_kernel  # noqa: E402
from sfc_plugin.utils.fileio import write_json  # noqa: E402


def timed_pass(model, source: str, first: str, in_flight: int):
    """(frames/s, digest of every prediction) of one pass over the video.
    """
    digest = hashlib.sha256()
    frames = 0
    start = time.perf_counter()
    for frame in inference_video(model, open_video(source), first,
                                 frames_in_flight=in_flight):
        digest.update(frame.pred.tobytes())
        frames += 1
    return frames / (time.perf_counter() - start), digest.hexdigest()


def compare(model, source: str, first: str, settings, repeats: int):
    """Rows per setting: best frames/s over ``repeats`` alternating passes,
    the speed-up over the first setting, and whether its predictions
    equal the first setting's."""
    timed_pass(model, source, first, settings[0])  # warm-up
    best, digests = {}, {}
    for _ in range(repeats):
        for in_flight in settings:
            fps, digest = timed_pass(model, source, first, in_flight)
            best[in_flight] = max(best.get(in_flight, 0.0), fps)
            digests.setdefault(in_flight, set()).add(digest)
    reference = settings[0]
    return [dict(frames_in_flight=n, frames_per_second=best[n],
                 speed_up=best[n] / best[reference],
                 same_predictions=digests[n] == digests[reference]
                 and len(digests[n]) == 1)
            for n in settings]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--config', default='sfc_davis.py')
    p.add_argument('--precision', default='fp32',
                   choices=['fp32', 'bf16', 'fp16'])
    p.add_argument('--device',
                   default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--frames', type=int, default=150)
    p.add_argument('--in-flight', type=int, nargs='+', default=[0, 1, 2],
                   help='settings to compare, the first the reference')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--quick', action='store_true',
                   help='a 96×160 generated video')
    p.add_argument('--cuda-graphs', action='store_true',
                   help='the encoder as a replayed CUDA graph '
                   '(model.cuda_graphs)')
    p.add_argument('--profile', action='store_true',
                   help='profile a pass at the last --in-flight setting')
    p.add_argument('--out', help='also write the rows as JSON here')
    args = p.parse_args(argv)
    if args.frames < 2 or args.repeats < 1 or min(args.in_flight) < 0:
        p.error('need --frames >= 2, --repeats >= 1, --in-flight >= 0')
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix='tracking_overlap_') as tmp:
        source, first, what = tracking_source(args.frames, tmp, args.quick)
        model = init_tracker(
            tracker_config(args.config, precision=args.precision,
                           cfg_options={'model.cuda_graphs': True}
                           if args.cuda_graphs else None),
            args.device)
        load_native_ops()
        kernel = matching_kernel(model.feature_dtype, args.device)
        graphs = ', encoder as a CUDA graph' if args.cuda_graphs else ''
        print(f'{args.config} {args.precision} on {args.device} (matching '
              f'{kernel}{graphs}), {what}, best of {args.repeats}, torch '
              f'{torch.__version__}')
        rows = compare(model, source, first, args.in_flight, args.repeats)
        profile = None
        if args.profile:
            profile = device_profile(
                lambda: timed_pass(model, source, first, args.in_flight[-1]),
                args.frames, args.device)
    print('| frames in flight | frames/s | speed-up | same predictions |')
    print('|---:|---:|---:|---|')
    for r in rows:
        print(f'| {r["frames_in_flight"]} | {r["frames_per_second"]:.2f} | '
              f'{r["speed_up"]:.2f}× | '
              f'{"yes" if r["same_predictions"] else "NO"} |')
    if profile is not None:
        busy = profile['busy_ms']
        print(f'\nper frame at {args.in_flight[-1]} in flight: '
              f'{profile["wall_ms"]:.2f} ms, GPU busy '
              f'{"-" if busy is None else f"{busy:.2f} ms"}, '
              f'{profile["host_ops"]:.0f} host operators taking '
              f'{profile["host_op_ms"]:.2f} ms of the host')
        if profile['kernels']:
            print_kernel_table(profile, 'frame')
        print_host_op_table(profile, 'frame')
    if args.out:
        write_json(dict(config=args.config, precision=args.precision,
                        device=args.device, video=what,
                        cuda_graphs=args.cuda_graphs,
                        matching_kernel=kernel, rows=rows, profile=profile),
                   args.out, indent=1)
    if not all(r['same_predictions'] for r in rows):
        sys.exit('tracking_overlap: the settings disagree (see the table)')


if __name__ == '__main__':
    main()
