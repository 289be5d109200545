"""The CUDA matching kernel's configurations, timed side by side on one GPU.

The kernel is built in several configurations (query tile, keys per chunk,
micro-tile per thread, prefetch, minimum blocks per multiprocessor: see
``TileConfig`` in ``ops/csrc/cuda/topk_window_match_kernel.cuh``); the op
runs the first, ``torch.ops.sfc._topk_window_neighbours_config`` any of
them. This runs each on the same DAVIS 480p step as
``propagation_step.py`` (random unit-norm float32 features, channels-last
keys), checks that it returns exactly the default's neighbours (every
configuration computes each score with the same FMA sequence), and prints
a Markdown table per C: ms per frame (best of ``--repeats``), the speed-up
over the default, the scores the configuration's tiling computes (replayed
by ``cuda_kernel_work.py``) and the rate that implies, and the time over
the fp32 floor (eligible FLOPs at this GPU's cuBLAS fp32 rate).

    python benchmarks/cuda_kernel_configs.py --device cuda
    python benchmarks/cuda_kernel_configs.py --device cuda --topk 10 \\
        --radius 12 --channels 1280 --out configs.json
"""
import argparse
import json
import re
import sys
import time

import torch
from cuda_kernel_work import computed_pairs, half_widths
from propagation_step import eligible_pairs, inputs, matmul_rate, sync

from sfc_plugin.ops import native_ops_available

NAME = re.compile(r'(\d+)x(\d+)-keys(\d+)-micro\d+x\d+(-prefetch)?-min\d+')


def tiling(name: str):
    """(tile rows, tile columns, keys per chunk) of a configuration."""
    match = NAME.fullmatch(name)
    if match is None:
        raise ValueError(f'unexpected kernel configuration name {name!r}')
    return tuple(int(g) for g in match.groups()[:3])


def time_config(config: str, query, keys, args) -> tuple:
    """(best seconds, weights, indices) of one configuration."""
    op = torch.ops.sfc._topk_window_neighbours_config
    call = (query, keys, args.topk, args.radius, 0.05, 1, config)
    weights, indices = op(*call)  # warm-up
    best = float('inf')
    for _ in range(args.repeats):
        sync(query.device)
        start = time.perf_counter()
        op(*call)
        sync(query.device)
        best = min(best, time.perf_counter() - start)
    return best, weights, indices


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cuda')
    p.add_argument('--channels', type=int, nargs='+', default=[256, 1280])
    p.add_argument('--height', type=int, default=60)
    p.add_argument('--width', type=int, default=107)
    p.add_argument('--frames', type=int, default=21, help='T = 1 + m')
    p.add_argument('--topk', type=int, default=15)
    p.add_argument('--radius', type=float, default=15.0)
    p.add_argument('--repeats', type=int, default=10)
    p.add_argument('--out', help='also write the rows as JSON here')
    args = p.parse_args()
    args.labels = 1
    device = torch.device(args.device)
    if device.type != 'cuda' or not native_ops_available(device):
        sys.exit(f'cuda_kernel_configs: needs the CUDA kernel, and '
                 f'{device} has none (a CUDA device and `python -m '
                 'sfc_plugin.ops` to build it)')
    configs = list(torch.ops.sfc._topk_window_kernel_configs())
    eligible = eligible_pairs(args)
    rate = matmul_rate(device)
    half = half_widths(args.radius, args.height, args.width)
    print(f'torch {torch.__version__}, {torch.cuda.get_device_name(device)}'
          f'; {args.height}×{args.width}, T={args.frames}, k={args.topk}, '
          f"r'={args.radius}, best of {args.repeats}; "
          f'{eligible / 1e6:.1f} M eligible pairs; fp32 matmul '
          f'{rate / 1e3:.1f} TFLOP/s')
    rows = []
    for channels in args.channels:
        query, keys, _ = inputs(args, channels, device)
        query, keys = query[None], keys[None]
        floor = 2 * channels * eligible / rate / 1e9
        print(f'\nC = {channels}: fp32 floor {1e3 * floor:.2f} ms')
        print('| configuration | ms/frame | vs default | computed (M) | '
              'computed TFLOP/s | × floor | same as default |')
        print('|---|---:|---:|---:|---:|---:|---|')
        default = None
        for config in configs:
            seconds, weights, indices = time_config(config, query, keys,
                                                    args)
            if default is None:
                default = (seconds, weights, indices)
            same = (torch.equal(indices, default[2])
                    and torch.equal(weights, default[1]))
            rows_, cols, chunk = tiling(config)
            computed = computed_pairs(half, args.height, args.width,
                                      args.frames, 1, rows_, cols, True,
                                      chunk)
            r = dict(channels=channels, config=config, seconds=seconds,
                     speedup=default[0] / seconds, computed_pairs=computed,
                     computed_tflops=2 * channels * computed / seconds / 1e12,
                     floor_s=floor, vs_floor=seconds / floor,
                     same_as_default=same)
            rows.append(r)
            print(f'| {config} | {1e3 * seconds:.2f} | {r["speedup"]:.2f}× | '
                  f'{computed / 1e6:.1f} | {r["computed_tflops"]:.1f} | '
                  f'{r["vs_floor"]:.1f}× | {"yes" if same else "NO"} |')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(device=torch.cuda.get_device_name(device),
                           matmul_gflops=rate, topk=args.topk,
                           radius=args.radius, rows=rows), f, indent=1)
    if not all(r['same_as_default'] for r in rows):
        sys.exit('cuda_kernel_configs: a configuration disagrees with the '
                 'default (see the table)')


if __name__ == '__main__':
    main()
