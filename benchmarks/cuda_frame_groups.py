"""The CUDA matching kernel's frame groups: the launch plan's against others.

The query tiles of a 480p step alone give too few blocks to fill a GPU, so
the kernel splits each tile's keys into groups (each block keeps its
group's top-k, and a second kernel merges them); the launch plan takes the
fewest groups that make a full wave of resident blocks. On an H200 that was
2 groups at 480p: 420 blocks for 396 places, so a second wave of 24 blocks
(Nsight Compute: 1.06 waves). A group is a share of the frames, whole (the
op's way), or with ``SFC_PLUGIN_GROUP_BY=chunks`` a share of every frame's
key chunks: equally long blocks that read the same frame at once, for which
the plan takes up to 4× as many groups, the count whose last wave leaves
the fewest places idle (7 at 480p in float32 on an H200).

This times the op (``torch.ops.sfc.topk_window_neighbours``, its default
configuration for the features' type) with ``SFC_PLUGIN_FRAME_GROUPS``
unset (the plan) and set to each of ``--groups``, for each of
``--group-by``, on the DAVIS 480p step of ``propagation_step.py``, float32
and bfloat16 features; each run's neighbours must equal those of the plan
with groups of frames (the merge keeps the order of equal affinities). It
prints a Markdown table per C: ms per frame (best of ``--repeats``) and the
speed-up over that plan.

    python benchmarks/cuda_frame_groups.py
    python benchmarks/cuda_frame_groups.py --topk 10 --radius 12 \\
        --groups 1 2 3 4 --group-by chunks --out groups.json
"""
import sys

import torch
from gpu_check import environment
from propagation_step import (
    best_seconds,
    cuda_kernel_device,
    inputs,
    kernel_benchmark_parser,
)

from sfc_plugin.utils.fileio import write_json

VARIABLE = 'SFC_PLUGIN_FRAME_GROUPS'
GROUP_BY = 'SFC_PLUGIN_GROUP_BY'
DTYPES = (torch.float32, torch.bfloat16)


def run(query, keys, args, groups: str, by: str = 'frames'):
    """(best seconds, weights, indices) with ``groups`` ('' the plan) of
    ``by`` ('frames' or 'chunks')."""
    with environment(**{VARIABLE: groups, GROUP_BY: by}):
        call = (query, keys, args.topk, args.radius, 0.05, 1)
        weights, indices = torch.ops.sfc.topk_window_neighbours(*call)
        seconds = best_seconds(
            lambda: torch.ops.sfc.topk_window_neighbours(*call),
            query.device, args.repeats)
    return seconds, weights, indices


def compare(args, device) -> list:
    """Times the plan and every asked group count, of each asked kind,
    per C and type; prints the tables and returns their rows."""
    rows = []
    for channels in args.channels:
        query, keys, _ = inputs(args, channels, device)
        print(f'\nC = {channels}')
        print('| features | groups of | groups | ms/frame | vs the plan '
              '| check |')
        print('|---|---|---|---:|---:|---|')
        for dtype in DTYPES:
            q, k = query[None].to(dtype), keys[None].to(dtype)
            plan = run(q, k, args, '')
            for by in args.group_by:
                for groups in [''] + [str(g) for g in args.groups]:
                    seconds, weights, indices = (
                        plan if (by, groups) == ('frames', '') else
                        run(q, k, args, groups, by))
                    ok = (torch.equal(indices, plan[2]) and torch.allclose(
                        weights, plan[1], rtol=0, atol=1e-6))
                    r = dict(channels=channels, features=str(dtype)[6:],
                             by=by, groups=groups or 'plan',
                             seconds=seconds, speedup=plan[0] / seconds,
                             ok=ok)
                    rows.append(r)
                    check = 'same as the plan' if ok else 'NOT the plan\'s'
                    print(f'| {r["features"]} | {by} | {r["groups"]} | '
                          f'{1e3 * seconds:.2f} | {r["speedup"]:.2f}× | '
                          f'{check} |')
    return rows


def parse_args(argv=None):
    p = kernel_benchmark_parser(__doc__.splitlines()[0])
    p.add_argument('--groups', type=int, nargs='+',
                   default=[1, 2, 3, 4, 5, 6, 7, 8, 11, 21],
                   help='group counts to time beside the plan (1 to 64)')
    p.add_argument('--group-by', nargs='+', choices=('frames', 'chunks'),
                   default=['frames', 'chunks'],
                   help='what a group is: a share of the frames, or of '
                   "every frame's key chunks (default: both)")
    args = p.parse_args(argv)
    bad = [g for g in args.groups if not 1 <= g <= 64]
    if bad:
        p.error(f'--groups must be from 1 to 64, got {bad[0]}')
    if args.repeats < 1:
        p.error(f'--repeats must be at least 1, got {args.repeats}')
    args.labels = 1
    return args


def main() -> None:
    args = parse_args()
    device = cuda_kernel_device('cuda_frame_groups', args.device)
    print(f'torch {torch.__version__}, {torch.cuda.get_device_name(device)}'
          f'; {args.height}×{args.width}, T={args.frames}, k={args.topk}, '
          f"r'={args.radius}, best of {args.repeats}")
    rows = compare(args, device)
    if args.out:
        write_json(dict(device=torch.cuda.get_device_name(device),
                        topk=args.topk, radius=args.radius, rows=rows),
                   args.out, indent=1)
    if not all(r['ok'] for r in rows):
        sys.exit('cuda_frame_groups: a group count changed the neighbours '
                 '(see the table)')


if __name__ == '__main__':
    main()
