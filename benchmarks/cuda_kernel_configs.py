"""The CUDA matching kernel's configurations, timed side by side on one GPU.

The kernel is built in several configurations (query tile, keys per chunk,
micro-tile per thread, prefetch, minimum blocks per multiprocessor, or
tensor cores: see ``TileConfig``, ``TensorCoreConfig`` and
``Tf32TensorCoreConfig`` in ``ops/csrc/cuda/topk_window_match_kernel.cuh``);
the first is the CUDA-core default (the op's choice for float64, before
sm_80, or with ``SFC_PLUGIN_TENSOR_CORES=0``; ``op_config_name`` names the
op's choice otherwise), ``torch.ops.sfc._topk_window_neighbours_config``
runs any of them. This runs each on the same DAVIS 480p step as
``propagation_step.py`` (random unit-norm features, channels-last keys):
the CUDA-core ones on float32 features, each checked to return exactly the
CUDA-core default's neighbours (every one computes a score with the same FMA
sequence); the 3xTF32 ones on float32 features too, and the 16-bit
tensor-core ones on bfloat16 features, each against the CUDA-core default
on the same features (the share of equal neighbour indices, at least 99%: the
tensor cores group the float32 sums their own way; for 3xTF32 also the
weights within 1e-4). It prints a Markdown table per C:
ms per frame (best of ``--repeats``), the speed-up over the CUDA-core
default on the same features, the scores the configuration's tiling
computes (replayed by ``cuda_kernel_work.py``) and the rate that implies,
and the time over the fp32 floor (eligible FLOPs at this GPU's cuBLAS
fp32 rate).

    python benchmarks/cuda_kernel_configs.py --device cuda
    python benchmarks/cuda_kernel_configs.py --device cuda --topk 10 \\
        --radius 12 --channels 1280 --out configs.json
"""
import re
import sys

import torch
from cuda_kernel_work import computed_pairs, half_widths
from propagation_step import (
    best_seconds,
    cuda_kernel_device,
    eligible_pairs,
    inputs,
    kernel_benchmark_parser,
    matmul_rate,
)

from sfc_plugin.utils.fileio import write_json

NAME = re.compile(r'(\d+)x(\d+)-keys(\d+)-'
                  r'(?:micro\d+x\d+|tensorcores-c\d+|'
                  r'tf32x3-c\d+)(?:-prefetch)?-min\d+')


def tiling(name: str):
    """(tile rows, tile columns, keys per chunk) of a configuration."""
    match = NAME.fullmatch(name)
    if match is None:
        raise ValueError(f'unexpected kernel configuration name {name!r}')
    return tuple(int(g) for g in match.groups()[:3])


def time_config(neighbours, config: str, query, keys, args) -> tuple:
    """(best seconds, weights, indices) of one configuration on these
    features; ``neighbours`` is the op
    (``torch.ops.sfc._topk_window_neighbours_config``)."""
    call = (query, keys, args.topk, args.radius, 0.05, 1, config)
    weights, indices = neighbours(*call)  # warm-up
    seconds = best_seconds(lambda: neighbours(*call), query.device,
                           args.repeats)
    return seconds, weights, indices


def compare(args, device, configs, neighbours, rate: float) -> list:
    """Times every configuration (the CUDA-core default first) for each C
    and prints the tables; returns their rows. ``rate`` is the fp32 matmul
    GFLOP/s."""
    eligible = eligible_pairs(args)
    half = half_widths(args.radius, args.height, args.width)
    rows = []
    for channels in args.channels:
        query, keys, _ = inputs(args, channels, device)
        query, keys = query[None], keys[None]
        floor = 2 * channels * eligible / rate / 1e9
        print(f'\nC = {channels}: fp32 floor {1e3 * floor:.2f} ms')
        print('| configuration | features | ms/frame | vs CUDA-core default | '
              'computed '
              '(M) | computed TFLOP/s | × fp32 floor | check |')
        print('|---|---|---:|---:|---:|---:|---:|---|')
        default = {}
        for config in configs:
            tensor_cores = 'tensorcores' in config
            dtype = torch.bfloat16 if tensor_cores else torch.float32
            features = (query.to(dtype), keys.to(dtype))
            if dtype not in default:
                default[dtype] = time_config(neighbours, configs[0],
                                             *features, args)
            seconds, weights, indices = time_config(neighbours, config,
                                                    *features, args)
            base_seconds, base_weights, base_indices = default[dtype]
            agreement = (indices == base_indices).float().mean().item()
            if tensor_cores:
                ok = agreement >= 0.99
                check = f'{100 * agreement:.2f}% of indices = CUDA cores'
            elif '-tf32x3-' in config:
                error = (weights - base_weights).abs().max().item()
                ok = agreement >= 0.99 and error <= 1e-4
                check = (f'{100 * agreement:.2f}% of indices = CUDA cores, '
                         f'weights within {error:.1e}')
            else:
                ok = (torch.equal(indices, base_indices)
                      and torch.equal(weights, base_weights))
                check = ('same as the CUDA-core default' if ok else
                         'NOT the CUDA-core default\'s')
            rows_, cols, chunk = tiling(config)
            computed = computed_pairs(half, args.height, args.width,
                                      args.frames, 1, rows_, cols, True,
                                      chunk)
            r = dict(channels=channels, config=config,
                     features=str(dtype).split('.')[-1], seconds=seconds,
                     speedup=base_seconds / seconds, computed_pairs=computed,
                     computed_tflops=2 * channels * computed / seconds / 1e12,
                     floor_s=floor, vs_floor=seconds / floor,
                     index_agreement=agreement, ok=ok, check=check)
            rows.append(r)
            print(f'| {config} | {r["features"]} | {1e3 * seconds:.2f} | '
                  f'{r["speedup"]:.2f}× | {computed / 1e6:.1f} | '
                  f'{r["computed_tflops"]:.1f} | {r["vs_floor"]:.1f}× | '
                  f'{check} |')
    return rows


def parse_args(argv=None):
    args = kernel_benchmark_parser(__doc__.splitlines()[0]).parse_args(argv)
    args.labels = 1
    return args


def main() -> None:
    args = parse_args()
    device = cuda_kernel_device('cuda_kernel_configs', args.device)
    configs = list(torch.ops.sfc._topk_window_kernel_configs())
    rate = matmul_rate(device)
    name = torch.cuda.get_device_name(device)
    print(f'torch {torch.__version__}, {name}; {args.height}×{args.width}, '
          f"T={args.frames}, k={args.topk}, r'={args.radius}, best of "
          f'{args.repeats}; {eligible_pairs(args) / 1e6:.1f} M eligible '
          f'pairs; fp32 matmul {rate / 1e3:.1f} TFLOP/s')
    rows = compare(args, device, configs,
                   torch.ops.sfc._topk_window_neighbours_config, rate)
    if args.out:
        write_json(dict(device=name, matmul_gflops=rate, topk=args.topk,
                        radius=args.radius, rows=rows), args.out, indent=1)
    if not all(r['ok'] for r in rows):
        sys.exit('cuda_kernel_configs: a configuration disagrees with the '
                 'default (see the table)')


if __name__ == '__main__':
    main()
