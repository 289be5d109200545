"""Time one label-propagation step (``topk_window_match``) at DAVIS 480p.

Random unit-norm features of a 60×107 grid (854×480 at stride 8), T = 1 + m
key frames, first frame unrestricted; prints a Markdown table with the time
per frame and the process's peak RSS growth over the step.

    python benchmarks/propagation_step.py --channels 256 1280 --repeats 2
"""
import argparse
import resource
import time

import torch
import torch.nn.functional as F

from sfc_plugin.ops import topk_window_match


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--channels', type=int, nargs='+', default=[256, 1280])
    p.add_argument('--height', type=int, default=60)
    p.add_argument('--width', type=int, default=107)
    p.add_argument('--frames', type=int, default=21, help='T = 1 + m')
    p.add_argument('--labels', type=int, default=2)
    p.add_argument('--topk', type=int, default=10)
    p.add_argument('--radius', type=float, default=12)
    p.add_argument('--repeats', type=int, default=2)
    args = p.parse_args()
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads; '
          f'{args.height}×{args.width}, T={args.frames}, k={args.topk}, '
          f"r'={args.radius}")
    print('| C | s/frame | peak RSS growth (MiB) |')
    print('|---:|---:|---:|')
    for c in args.channels:
        gen = torch.Generator().manual_seed(0)
        h, w, t = args.height, args.width, args.frames
        query = F.normalize(torch.randn(c, h, w, generator=gen), dim=0)
        keys = F.normalize(torch.randn(t, c, h, w, generator=gen), dim=1)
        labels = torch.softmax(torch.randn(t, args.labels, h, w,
                                           generator=gen), 1)
        before = peak_rss_mib()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            topk_window_match(query, keys, labels, topk=args.topk,
                              radius=args.radius, temperature=0.05)
            times.append(time.perf_counter() - start)
        print(f'| {c} | {min(times):.2f} | {peak_rss_mib() - before:.0f} |')


if __name__ == '__main__':
    main()
