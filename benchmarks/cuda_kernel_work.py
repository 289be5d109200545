"""Scores the CUDA matching kernel computes per frame, against the eligible.

The kernel scores whole chunks of 64 keys for every query slot of a tile,
so it computes more (query, key) products than the window holds; this
replays its tiling on the CPU (no GPU, no timing) and counts them, for the
kernel's present tiling and for the one-row tiles it had until 2026-11-26
(32 queries of one row, each key row's union padded to whole chunks), in
the DAVIS settings at 480p. The eligible count is the one
``propagation_step.py`` prints.

    python benchmarks/cuda_kernel_work.py
    python benchmarks/cuda_kernel_work.py --height 135 --width 240
"""
import argparse
import math
from typing import List

CHUNK = 64  # the default configuration's keys per chunk

#: (label, top-k, r'): as gpu_check.py's MATCH_SETTINGS.
SETTINGS = (('SFC k15 r15', 15.0), ('FC k10 r12', 12.0))


def half_widths(radius: float, height: int, width: int) -> List[int]:
    """Largest |dx| with dx² + dy² < r² per row distance dy (-1: none), as
    ``window_half_widths`` in ``topk_window_match.h``."""
    half = []
    for dy in range(height):
        fits = [dx for dx in range(width) if dx * dx + dy * dy < radius**2]
        half.append(max(fits) if fits else -1)
    return half


def eligible_pairs(half, height, width, frames, free) -> int:
    total = 0
    for y in range(height):
        for x in range(width):
            window = 0
            for ky in range(height):
                h = half[abs(ky - y)]
                if h >= 0:
                    window += min(width - 1, x + h) - max(0, x - h) + 1
            total += free * height * width + (frames - free) * window
    return total


def computed_pairs(half, height, width, frames, free, rows: int, cols: int,
                   packed: bool, chunk: int = CHUNK) -> int:
    """Scores of a rows × cols tiling with ``chunk`` keys per chunk (every
    query slot of a tile is scored, inside the map or not): unrestricted
    frames whole, and in a restricted frame the union of the tile's
    windows, either packed into chunks (the kernel now) or padded to whole
    chunks row by row (before)."""
    whole = math.ceil(height * width / chunk) * chunk
    total = 0
    for y0 in range(0, height, rows):
        tile_rows = range(y0, min(y0 + rows, height))
        for x0 in range(0, width, cols):
            x1 = min(x0 + cols, width) - 1
            lengths = []
            for ky in range(height):
                widest = max(half[abs(ky - qy)] for qy in tile_rows)
                if widest >= 0:
                    lengths.append(min(width - 1, x1 + widest) -
                                   max(0, x0 - widest) + 1)
            if packed:
                restricted = math.ceil(sum(lengths) / chunk) * chunk
            else:
                restricted = sum(
                    math.ceil(n / chunk) * chunk for n in lengths)
            total += rows * cols * (free * whole +
                                    (frames - free) * restricted)
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--height', type=int, default=60)
    p.add_argument('--width', type=int, default=107)
    p.add_argument('--frames', type=int, default=21)
    p.add_argument('--unrestricted', type=int, default=1)
    args = p.parse_args()
    h, w, t, free = args.height, args.width, args.frames, args.unrestricted
    print(f'{h}×{w} feature map, T = {t}, {free} unrestricted')
    print('| setting | eligible (M) | tiling | computed (M) | computed / '
          'eligible |')
    print('|---|---:|---|---:|---:|')
    for label, radius in SETTINGS:
        half = half_widths(radius, h, w)
        eligible = eligible_pairs(half, h, w, t, free)
        for name, rows, cols, packed in (
                ('4×8, packed unions (now)', 4, 8, True),
                ('1×32, per-row chunks (before)', 1, 32, False)):
            computed = computed_pairs(half, h, w, t, free, rows, cols,
                                      packed)
            print(f'| {label} | {eligible / 1e6:.1f} | {name} | '
                  f'{computed / 1e6:.1f} | {computed / eligible:.2f}× |')


if __name__ == '__main__':
    main()
