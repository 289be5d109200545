"""Masks of a deployed encoder against the PyTorch fp32 run, per sequence.

Exports the config's encoder from one checkpoint (fp32 and/or fp16 ONNX,
``export/to_onnx.py``'s checked export), then tracks every sequence of a
DAVIS split three ways with ``track_video`` at full resolution: the PyTorch
encoder in fp32 and each ONNX model on ONNX Runtime. Prints, per sequence
and in all, the share of mask pixels equal to the PyTorch run's and the
J&F of each run (DAVIS protocol). Nothing but the temporary folder is
written.

    python benchmarks/backend_agreement.py --checkpoint fc.pth
    python benchmarks/backend_agreement.py --checkpoint fc.pth \\
        --config sfc_davis.py --precisions fp16 --device cuda
"""
import argparse
import os
import os.path as osp
import platform
import sys
import tempfile
import time

import numpy as np
from PIL import Image

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DAVIS2016 = osp.join(REPO, '..', 'shared', 'data', 'davis2016')
sys.path.insert(0, REPO)


def masks_of(folder: str) -> dict:
    return {n: np.array(Image.open(osp.join(folder, n)))
            for n in sorted(os.listdir(folder)) if n.endswith('.png')}


def split_sequences(data_root: str, ann_file: str) -> list:
    with open(osp.join(data_root, ann_file)) as f:
        return f.read().split()


def track_split(data_root: str, ann_file: str, out: str,
                **track_kwargs) -> float:
    """``track_video`` on every sequence of a DAVIS split into
    ``out/<sequence>``; the seconds it took."""
    from sfc_plugin.apis import track_video
    start = time.perf_counter()
    for seq in split_sequences(data_root, ann_file):
        track_video(
            osp.join(data_root, 'JPEGImages', '480p', seq),
            osp.join(data_root, 'Annotations', '480p', seq, '00000.png'),
            osp.join(out, seq), overlay=False, progress=False,
            **track_kwargs)
    return time.perf_counter() - start


def print_agreement(runs: list, root: str, data_root: str, ann_file: str,
                    seconds: dict, score: bool = True) -> None:
    """Per sequence and in all, the share of mask pixels of each run equal
    to the first run's (folders ``root/<run>/<sequence>``), then each
    run's J&F (DAVIS protocol, whole sequences only) and time."""
    from sfc_plugin.evaluation import evaluate_davis_results
    sequences = split_sequences(data_root, ann_file)
    reference, others = runs[0], runs[1:]
    rows, totals = [], {name: [0, 0] for name in others}
    for seq in sequences:
        ref = masks_of(osp.join(root, reference, seq))
        row = [seq, str(len(ref))]
        for name in others:
            got = masks_of(osp.join(root, name, seq))
            same = sum(int((got[k] == v).sum()) for k, v in ref.items())
            pixels = sum(v.size for v in ref.values())
            totals[name][0] += same
            totals[name][1] += pixels
            row.append(f'{100 * same / pixels:.3f}%')
        rows.append(row)
    print('| sequence | frames | ' + ' | '.join(
        f'{n} = {reference}' for n in others) + ' |')
    print('|---|---:|' + '---:|' * len(others))
    for row in rows:
        print('| ' + ' | '.join(row) + ' |')
    print('| **all** | | ' + ' | '.join(
        f'**{100 * totals[n][0] / totals[n][1]:.3f}%**' for n in others) +
          ' |')
    print()
    print('| run | J&F-Mean | J-Mean | F-Mean | seconds |')
    print('|---|---:|---:|---:|---:|')
    for name in runs:
        s = evaluate_davis_results(osp.join(root, name), data_root,
                                   ann_file) if score else {}
        cells = [f'{s[k]:.4f}' if k in s else '–'
                 for k in ('J&F-Mean', 'J-Mean', 'F-Mean')]
        print(f'| {name} | {" | ".join(cells)} | {seconds[name]:.0f} |')


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkpoint', required=True, help='FC checkpoint')
    parser.add_argument('--config', default='fc_davis.py')
    parser.add_argument('--data-root', default=DAVIS2016)
    parser.add_argument('--ann-file', default='ImageSets/val.txt')
    parser.add_argument('--precisions', nargs='+', default=['fp16', 'fp32'],
                        choices=['fp16', 'fp32'])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--max-frames', type=int)
    args = parser.parse_args(argv)

    from sfc_plugin.deploy import export_encoder
    from sfc_plugin.utils import register_all_modules
    from sfc_plugin.utils.config import load_config
    register_all_modules()
    first = osp.join(args.data_root, 'JPEGImages', '480p',
                     split_sequences(args.data_root, args.ann_file)[0])
    runs, seconds = {'torch-fp32': None}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions:
            model = osp.join(tmp, f'encoder-{precision}.onnx')
            export_encoder(load_config(args.config), model, [first],
                           checkpoint=args.checkpoint,
                           fp16=precision == 'fp16')
            runs[f'onnxruntime-{precision}'] = model
        for name, model in runs.items():
            seconds[name] = track_split(
                args.data_root, args.ann_file, osp.join(tmp, name),
                config=args.config, checkpoint=args.checkpoint,
                backend=None if model is None else 'onnxruntime',
                backend_model=model, device=args.device,
                max_frames=args.max_frames)
        print(f'{args.config}, checkpoint {args.checkpoint}, {args.device}, '
              f'{platform.node()}, {time.strftime("%Y-%m-%d")}')
        # DAVIS scores whole sequences only.
        print_agreement(list(runs), tmp, args.data_root, args.ann_file,
                        seconds, score=not args.max_frames)


if __name__ == '__main__':
    main()
