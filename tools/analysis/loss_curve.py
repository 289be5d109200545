"""Summarise the loss curve of a training run from its mmengine logs.

Reads ``<work_dir>/<timestamp>/vis_data/scalars.json`` (written by mmengine's
LocalVisBackend; all timestamps of the work dir, so resumed runs join up),
prints a Markdown table of the mean loss per bin of iterations, and with
``--png`` draws the curve.

    python tools/analysis/loss_curve.py work_dirs/fc_davis --bin 25 \
        --png loss.png

Errors are one line naming the file or argument (exit status 1).
"""
import argparse
import glob
import io
import json
import math
import os.path as osp
from collections import OrderedDict

from sfc_plugin.utils.cli import add_debug_argument, run_tool
from sfc_plugin.utils.fileio import (
    check_output_location,
    check_writable_file,
    write_bytes,
)


def read_scalars(work_dir: str, key: str) -> 'OrderedDict[int, dict]':
    """The logged records holding ``key``, by iteration.

    Raises:
        FileNotFoundError: No scalars file under ``work_dir``.
        ValueError: A line that is not a JSON record, or a ``key`` that is
            not a number (naming the file and line); no record of ``key``.
    """
    files = scalar_files(work_dir)
    records = OrderedDict()
    for path in files:
        with open(path, encoding='utf-8', errors='replace') as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    raise ValueError(
                        f'"{path}" line {number} is not a JSON record (a '
                        'log cut short?)') from None
                if not isinstance(rec, dict) or key not in rec or (
                        'iter' not in rec):
                    continue
                value = rec[key]
                if isinstance(value, bool) or not isinstance(
                        value, (int, float)) or not isinstance(
                            rec['iter'], int):
                    raise ValueError(
                        f'"{path}" line {number}: {key} {value!r} at iter '
                        f'{rec["iter"]!r} is not a number')
                # A resumed run re-logs nothing before its start, so the
                # latest record of an iteration wins.
                records[rec['iter']] = rec
    if not records:
        raise ValueError(f'no "{key}" records in {files}')
    return OrderedDict(sorted(records.items()))


def scalar_files(work_dir: str) -> list:
    files = sorted(
        glob.glob(osp.join(glob.escape(work_dir), '*', 'vis_data',
                           'scalars.json')))
    if not files:
        raise FileNotFoundError(
            f'no */vis_data/scalars.json under "{work_dir}": is it the work '
            'dir of a training run?')
    return files


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('work_dir')
    p.add_argument('--key', default='loss')
    p.add_argument('--bin', type=int, default=25,
                   help='iterations per table row (>= 1)')
    p.add_argument('--png', help='also draw the curve into this .png file')
    add_debug_argument(p)
    args = p.parse_args(argv)
    if args.bin < 1:
        p.error(f'--bin must be >= 1, got {args.bin}')
    if args.png is not None and not args.png.lower().endswith('.png'):
        p.error(f'--png "{args.png}" must end with .png')
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.png:
        # Checked before any work: where it goes, and that it is no log.
        check_writable_file(args.png, '--png')
        check_output_location(
            args.png, {f'log {i}': f
                       for i, f in enumerate(scalar_files(args.work_dir))},
            '--png')
    records = read_scalars(args.work_dir, args.key)
    print(f'| iterations | mean {args.key} | target_momentum (last) |')
    print('|---|---:|---:|')
    bins = OrderedDict()
    for it, rec in records.items():
        bins.setdefault((it - 1) // args.bin, []).append(rec)
    for b, recs in bins.items():
        mean = math.fsum(r[args.key] for r in recs) / len(recs)
        momentum = recs[-1].get('target_momentum', float('nan'))
        print(f'| {b * args.bin + 1}–{recs[-1]["iter"]} | {mean:.4f} | '
              f'{momentum:.5f} |')
    if args.png:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(list(records), [r[args.key] for r in records.values()])
        ax.set_xlabel('iteration')
        ax.set_ylabel(args.key)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format='png', dpi=120)
        plt.close(fig)
        write_bytes(args.png, buffer.getvalue())
        print(f'curve written to {args.png}')


if __name__ == '__main__':
    run_tool(main, 'loss_curve.py')
