"""Score a results folder in the official DAVIS format (J&F).

    python tools/eval_davis.py RESULTS --data-root data/DAVIS \
        [--ann-file ImageSets/2017/val.txt] [--sequences blackswan ...]

RESULTS holds one folder per sequence with one palette PNG of object ids per
frame (what tools/track.py and ``mim test ... test_evaluator.output_dir=``
write); scored with the official protocol (DAVISMetric).
"""
import argparse

from sfc_plugin.evaluation import evaluate_davis_results
from sfc_plugin.utils.cli import add_debug_argument, run_tool

KEYS = ('J&F-Mean', 'J-Mean', 'J-Recall', 'J-Decay', 'F-Mean', 'F-Recall',
        'F-Decay')


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('results', help='results folder')
    parser.add_argument('--data-root', required=True, help='DAVIS root')
    parser.add_argument('--ann-file', default='ImageSets/2017/val.txt',
                        help='sequence list under the data root')
    parser.add_argument('--sequences', nargs='+',
                        help='score only these sequences of the list')
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    scores = evaluate_davis_results(args.results, args.data_root,
                                    args.ann_file, args.sequences)
    print('| ' + ' | '.join(KEYS) + ' |')
    print('|' + '---:|' * len(KEYS))
    print('| ' + ' | '.join(f'{scores[k]:.4f}' for k in KEYS) + ' |')


if __name__ == '__main__':
    run_tool(main, 'eval_davis.py')
