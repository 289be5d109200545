"""Summarise the loss curve of a training run from its mmengine logs.

Reads ``<work_dir>/<timestamp>/vis_data/scalars.json`` (written by mmengine's
LocalVisBackend; all timestamps of the work dir, so resumed runs join up),
prints a Markdown table of the mean loss per bin of iterations, and with
``--png`` draws the curve.

    python tools/analysis/loss_curve.py work_dirs/fc_davis --bin 25 \
        --png loss.png
"""
import argparse
import glob
import json
import os.path as osp
from collections import OrderedDict


def read_scalars(work_dir: str, key: str) -> 'OrderedDict[int, dict]':
    files = sorted(
        glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not files:
        raise SystemExit(f'no */vis_data/scalars.json under "{work_dir}": '
                         'is it the work dir of a training run?')
    records = OrderedDict()
    for path in files:
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                if key in rec and 'iter' in rec:
                    # A resumed run re-logs nothing before its start, so the
                    # latest record of an iteration wins.
                    records[rec['iter']] = rec
    if not records:
        raise SystemExit(f'no "{key}" records in {files}')
    return OrderedDict(sorted(records.items()))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('work_dir')
    p.add_argument('--key', default='loss')
    p.add_argument('--bin', type=int, default=25,
                   help='iterations per table row')
    p.add_argument('--png', help='also draw the curve into this file')
    args = p.parse_args()

    records = read_scalars(args.work_dir, args.key)
    print(f'| iterations | mean {args.key} | target_momentum (last) |')
    print('|---|---:|---:|')
    bins = OrderedDict()
    for it, rec in records.items():
        bins.setdefault((it - 1) // args.bin, []).append(rec)
    for b, recs in bins.items():
        mean = sum(r[args.key] for r in recs) / len(recs)
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
        fig.savefig(args.png, dpi=120)
        print(f'curve written to {args.png}')


if __name__ == '__main__':
    main()
