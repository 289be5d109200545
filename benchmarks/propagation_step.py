"""One label-propagation step (``topk_window_match``) at DAVIS 480p.

Random unit-norm features of a 60×107 grid (854×480 at stride 8), T = 1 + m
key frames (channels-last, as LabelPropagator keeps them), first frame
unrestricted. Each implementation runs in a fresh child process, so the peak
RSS it adds over the inputs is its own; outputs are checked against each
other. Prints a Markdown table.

    python benchmarks/propagation_step.py --channels 256 1280 \
        --impl tiled dense
"""
import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from sfc_plugin.ops import topk_window_match, topk_window_match_dense

IMPLS = dict(tiled=topk_window_match, dense=topk_window_match_dense)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def inputs(args, channels):
    gen = torch.Generator().manual_seed(0)
    h, w, t = args.height, args.width, args.frames
    query = F.normalize(torch.randn(channels, h, w, generator=gen), dim=0)
    keys = F.normalize(torch.randn(t, channels, h, w, generator=gen), dim=1)
    keys = keys.contiguous(memory_format=torch.channels_last)
    labels = torch.softmax(torch.randn(t, args.labels, h, w, generator=gen),
                           1)
    return query, keys, labels


def worker(args) -> None:
    query, keys, labels = inputs(args, args.worker_channels)
    before = peak_rss_mib()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = IMPLS[args.worker_impl](
            query, keys, labels, topk=args.topk, radius=args.radius,
            temperature=0.05)
        times.append(time.perf_counter() - start)
    torch.save(out, args.worker_out)
    print(json.dumps(dict(seconds=min(times),
                          extra_mib=peak_rss_mib() - before)))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--channels', type=int, nargs='+', default=[256, 1280])
    p.add_argument('--impl', nargs='+', default=['tiled', 'dense'],
                   choices=sorted(IMPLS))
    p.add_argument('--height', type=int, default=60)
    p.add_argument('--width', type=int, default=107)
    p.add_argument('--frames', type=int, default=21, help='T = 1 + m')
    p.add_argument('--labels', type=int, default=2)
    p.add_argument('--topk', type=int, default=10)
    p.add_argument('--radius', type=float, default=12)
    p.add_argument('--repeats', type=int, default=2)
    p.add_argument('--worker-impl', help=argparse.SUPPRESS)
    p.add_argument('--worker-channels', type=int, help=argparse.SUPPRESS)
    p.add_argument('--worker-out', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker_impl:
        return worker(args)

    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads; '
          f'{args.height}×{args.width}, T={args.frames}, k={args.topk}, '
          f"r'={args.radius}, best of {args.repeats}")
    print('| C | implementation | s/frame | extra peak RSS (MiB) | '
          'speed-up vs dense | max abs diff vs first |')
    print('|---:|---|---:|---:|---:|---:|')
    for c in args.channels:
        results, outs = {}, {}
        for impl in args.impl:
            out_path = f'/tmp/propagation_step_{impl}_{c}.pt'
            cmd = [sys.executable, __file__, *sys.argv[1:],
                   '--worker-impl', impl, '--worker-channels', str(c),
                   '--worker-out', out_path]
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  check=True)
            results[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
            outs[impl] = torch.load(out_path, weights_only=True)
        first = outs[args.impl[0]]
        for impl in args.impl:
            r = results[impl]
            speedup = (results['dense']['seconds'] / r['seconds']
                       if 'dense' in results else float('nan'))
            diff = (outs[impl] - first).abs().max().item()
            print(f'| {c} | {impl} | {r["seconds"]:.2f} | '
                  f'{r["extra_mib"]:.0f} | {speedup:.1f}× | {diff:.1e} |')


if __name__ == '__main__':
    main()
