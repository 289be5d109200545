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
import sys
from collections import OrderedDict

from sfc_plugin.utils.cli import add_debug_argument, run_tool
from sfc_plugin.utils.fileio import (
    check_output_location,
    check_writable_file,
    write_bytes,
)
from sfc_plugin.utils.validation import check_integer, check_real, shown

#: Iterations beyond this are no run's (and cannot be plotted exactly).
MAX_ITER = 2**53
#: The largest values, and widest range, a curve is drawn for:
#: matplotlib's tick placement multiplies them by up to 10 and overflows
#: near 1.8e307.
MAX_PLOT_SPAN = 1e300


class _LongInteger(ValueError):

    def __init__(self, digits: int):
        super().__init__(digits)
        self.digits = digits


def _parse_int(text: str) -> int:
    """JSON integers: one longer than ``int()`` reads (4300 digits unless
    the interpreter says otherwise) is named as such, not as a line cut
    short."""
    digits = len(text.lstrip('-'))
    limit = sys.get_int_max_str_digits()
    if limit and digits > limit:
        raise _LongInteger(digits)
    return int(text)


def read_scalars(work_dir: str, key: str) -> 'OrderedDict[int, dict]':
    """The logged records holding ``key``, by iteration, with ``key`` and
    ``target_momentum`` as floats.

    Raises:
        FileNotFoundError: No scalars file under ``work_dir``.
        ValueError: A scalars file that is no regular file (a FIFO would
            block), a line that is not a JSON record (or nests too deep,
            or holds an integer too long to read), a ``key`` or
            ``target_momentum`` that is not a number, an ``iter`` that is
            not an integer in [1, 2**53] (naming the file and line); no
            record of ``key``.
    """
    files = scalar_files(work_dir)
    records = OrderedDict()
    for path in files:
        # utf-8-sig: a byte-order mark (an editor's) is no part of line 1.
        with open(path, encoding='utf-8-sig', errors='replace') as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line, parse_int=_parse_int)
                except _LongInteger as err:
                    raise ValueError(f'"{path}" line {number} holds an '
                                     f'integer of {err.digits} digits: no '
                                     'logged value') from None
                except RecursionError:
                    raise ValueError(f'"{path}" line {number} nests deeper '
                                     'than a log record does') from None
                except ValueError:
                    raise ValueError(
                        f'"{path}" line {number} is not a JSON record (a '
                        'log cut short?)') from None
                if not isinstance(rec, dict) or key not in rec or (
                        'iter' not in rec):
                    continue
                it = rec['iter']
                try:
                    check_integer('', 'iter', it, low=1, high=MAX_ITER)
                except ValueError:
                    raise ValueError(
                        f'"{path}" line {number}: iter {shown(it)} is not '
                        'an iteration (an integer in [1, 2**53])') from None
                for name in (key, 'target_momentum'):
                    if name not in rec:
                        continue
                    # NaN and infinities (NaN, Infinity in mmengine's JSON)
                    # are a diverged run's; strings, bools, objects and
                    # integers beyond float range are no logged scalar.
                    try:
                        rec[name] = check_real(
                            f'"{path}" line {number} (iter {it})', name,
                            rec[name])
                    except ValueError as err:
                        raise ValueError(str(err)) from None
                # A resumed run re-logs nothing before its start, so the
                # latest record of an iteration wins.
                records[it] = rec
    if not records:
        raise ValueError(f'no "{key}" records in {files}')
    return OrderedDict(sorted(records.items()))


def cell(value: float, decimals: int) -> str:
    """A table cell: fixed point, or exponent notation where fixed point
    would be a hundred-digit number."""
    if math.isfinite(value) and abs(value) >= 1e6:
        return f'{value:.{decimals}e}'
    return f'{value:.{decimals}f}'


def bin_mean(values: list) -> float:
    """The mean, defined for a diverged run too: no overflow near the float
    limit, +-inf where values are, NaN for NaN or both infinities."""
    try:
        return math.fsum(values) / len(values)
    except ValueError:  # +inf and -inf
        return math.nan
    except OverflowError:
        # A sum beyond the float limit: summed scaled down by a power of
        # two (exact), the mean rounds to at most the largest value.
        scaled = math.fsum(math.ldexp(v, -16) for v in values)
        return math.ldexp(scaled / len(values), 16)


def scalar_files(work_dir: str) -> list:
    files = sorted(
        glob.glob(osp.join(glob.escape(work_dir), '*', 'vis_data',
                           'scalars.json')))
    if not files:
        raise FileNotFoundError(
            f'no */vis_data/scalars.json under "{work_dir}": is it the work '
            'dir of a training run?')
    for path in files:
        # A FIFO would block the read forever, a folder fail it.
        if not osp.isfile(path):
            raise ValueError(f'"{path}" is not a regular file')
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
    if args.png:
        # Checked before the table is printed. Non-finite values are gaps
        # in the curve; finite ones must be within MAX_PLOT_SPAN.
        finite = [r[args.key] for r in records.values()
                  if math.isfinite(r[args.key])]
        if finite and not (max(finite) - min(finite) <= MAX_PLOT_SPAN
                           and max(map(abs, finite)) <= MAX_PLOT_SPAN):
            raise ValueError(
                f'--png: {args.key} spans {min(finite):g} to '
                f'{max(finite):g}, beyond the +-{MAX_PLOT_SPAN:g} a curve '
                'can be drawn for (leave out --png for the table)')
    bins = OrderedDict()
    for it, rec in records.items():
        bins.setdefault((it - 1) // args.bin, []).append(rec)
    rows = [f'| iterations | mean {args.key} | target_momentum (last) |',
            '|---|---:|---:|']
    for b, recs in bins.items():
        mean = bin_mean([r[args.key] for r in recs])
        momentum = recs[-1].get('target_momentum', math.nan)
        rows.append(f'| {b * args.bin + 1}–{recs[-1]["iter"]} | '
                    f'{cell(mean, 4)} | {cell(momentum, 5)} |')
    print('\n'.join(rows))
    if args.png:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(list(records), [
            r[args.key] if math.isfinite(r[args.key]) else math.nan
            for r in records.values()
        ])
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
