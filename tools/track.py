"""Track objects, keypoints or parts through a video from its first frame.

    python tools/track.py SOURCE FIRST_LABELS --out DIR [--anchors ADIR]
        [options]
    python tools/track.py [--demo] [--out DIR]

SOURCE is a frame folder (frames named in order, e.g. 00000.jpg ...) or a
video file; FIRST_LABELS the first frame's labels: a palette or 8-bit PNG of
object ids (any number of objects; DAVIS-2016 {0, 255} masks are one
object), a part map with --num-classes, or a JSON list of [x, y] keypoints.
DIR receives one palette PNG per frame (DAVIS's results format; keypoints go
to keypoints.jsonl), overlay.mp4 and summary.json, all at once when the run
completes: an interrupted (Ctrl-C, SIGTERM) or failed run leaves DIR
untouched. DIR is never an input, inside one or holding one, and
--overwrite replaces only a previous result of this tool.

ADIR holds labels for later frames (corrections, objects entering the
scene), one file per frame named after it (00040.png for the frame
00040.jpg, or for frame 40 of a video file; .json for keypoints): each
replaces the prediction at its frame and is kept as long-term memory; ids
not seen before are new objects. With --complete-anchors an object absent
from an anchor ends there.

Errors are one line naming the file or argument (exit status 1; 130 when
interrupted); --debug (or SFC_PLUGIN_DEBUG=1) shows the traceback.

With no arguments (or --demo) a video with known ground truth is generated
and tracked, and its J&F printed.
"""
import argparse
import os
import os.path as osp
import re
import sys
import time

from sfc_plugin.apis import DEFAULT_CONFIG, track_video
from sfc_plugin.datasets import synthetic_video, write_davis_sequences
from sfc_plugin.evaluation import evaluate_davis_results
from sfc_plugin.utils.cli import (
    ConfigOptionsAction,
    add_debug_argument,
    run_tool,
)

DEMO_SEQUENCE = 'demo'
#: Every file a demo writes, relative to its --out folder: --overwrite
#: replaces a folder holding nothing else.
_DEMO_FILE = re.compile(
    r'data/ImageSets/val\.txt|'
    rf'data/JPEGImages/480p/{DEMO_SEQUENCE}/\d{{5}}\.jpg|'
    rf'data/Annotations/480p/{DEMO_SEQUENCE}/\d{{5}}\.png|'
    rf'results/{DEMO_SEQUENCE}(/.*)?|results/\.{DEMO_SEQUENCE}\..*')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog='Example: python tools/track.py '
        'data/DAVIS/JPEGImages/480p/blackswan '
        'data/DAVIS/Annotations/480p/blackswan/00000.png --out '
        'results/blackswan --config sfc_davis.py --checkpoint fc.pth '
        '--cfg-options model.encoder.semantic.checkpoint=moco.pth.tar')
    parser.add_argument('source', nargs='?',
                        help='frame folder or video file')
    parser.add_argument('first_labels', nargs='?',
                        help='first frame\'s mask / part map PNG or keypoint '
                        'JSON')
    parser.add_argument('--out', help='output folder (for the demo: '
                        'work_dirs/track_demo/<time>)')
    parser.add_argument('--demo', action='store_true',
                        help='track a generated video with known ground '
                        'truth and print its J&F')
    parser.add_argument('--config', default=DEFAULT_CONFIG,
                        help='tracker config: a file, or the name of a '
                        f'config of sfc_plugin (default: {DEFAULT_CONFIG})')
    parser.add_argument('--checkpoint',
                        help='FC checkpoint (the config\'s checkpoint_field); '
                        'without one the networks are randomly initialised')
    parser.add_argument('--cfg-options', nargs='+',
                        action=ConfigOptionsAction,
                        help='config overrides, key=value')
    parser.add_argument('--backend',
                        choices=['torch', 'onnxruntime', 'tensorrt'],
                        help='where the encoder runs (default: the config\'s '
                        'model.backend, else torch)')
    parser.add_argument('--backend-model',
                        help='ONNX file or TensorRT engine for --backend')
    parser.add_argument('--device',
                        help='cpu, cuda, cuda:1 ... (default: cuda if '
                        'available)')
    parser.add_argument('--num-classes', type=int,
                        help='FIRST_LABELS is a part map of this many classes '
                        '(background included)')
    parser.add_argument('--no-overlay', action='store_true',
                        help='do not write overlay.mp4')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace a previous result of this tool in the '
                        'output folder (nothing else is ever replaced)')
    parser.add_argument('--max-frames', type=int,
                        help='stop after this many frames (summary.json '
                        'then says complete: false)')
    parser.add_argument('--accept-truncated', action='store_true',
                        help='track a video file that cannot be decoded to '
                        'its end up to where it breaks (summary.json says '
                        'so) instead of failing')
    parser.add_argument('--anchors', metavar='ADIR',
                        help='folder of labels for later frames, one file '
                        'per frame named after it (see above)')
    parser.add_argument('--complete-anchors', action='store_true',
                        help='each anchor holds every object still in the '
                        'video: objects absent from it end there (object '
                        'masks)')
    parser.add_argument('--precision', choices=['fp32', 'bf16', 'fp16'],
                        help='encoder and matching precision of the torch '
                        'path (default: the config\'s, fp32, the paper '
                        'protocol); bf16 on CPUs with AVX-512 BF16 or on '
                        'GPUs, fp16 on GPUs')
    parser.add_argument('--quiet', action='store_true',
                        help='no progress bar')
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    if args.source is None and args.first_labels is None:
        args.demo = True
    if args.demo:
        if args.source is not None:
            parser.error('--demo tracks its own video: give no SOURCE')
    elif args.first_labels is None:
        parser.error('give SOURCE and FIRST_LABELS (or --demo)')
    elif args.out is None:
        parser.error('--out DIR is required')
    if args.max_frames is not None and args.max_frames < 1:
        parser.error('--max-frames must be >= 1')
    if args.demo and args.max_frames is not None:
        parser.error('--demo scores every frame of its video against the '
                     'ground truth: give no --max-frames')
    if args.complete_anchors and args.anchors is None:
        parser.error('--complete-anchors needs --anchors')
    return args


def run(args, source: str, first_labels: str, out_dir: str) -> dict:
    return track_video(
        source,
        first_labels,
        out_dir,
        config=args.config,
        checkpoint=args.checkpoint,
        cfg_options=args.cfg_options,
        backend=args.backend,
        backend_model=args.backend_model,
        device=args.device,
        num_classes=args.num_classes,
        overlay=not args.no_overlay,
        overwrite=args.overwrite,
        progress=not args.quiet,
        max_frames=args.max_frames,
        allow_truncated=args.accept_truncated,
        anchors=args.anchors,
        complete_anchors=args.complete_anchors,
        precision=args.precision)


def demo(args) -> None:
    out = args.out or osp.join('work_dirs', 'track_demo',
                               time.strftime('%Y%m%d_%H%M%S'))
    if osp.exists(out) and not osp.isdir(out):
        raise FileExistsError(f'--out "{out}" is a file')
    held = sorted(os.listdir(out)) if osp.isdir(out) else []
    if held and not args.overwrite:
        raise FileExistsError(f'--out "{out}" already holds files; choose '
                              'another folder, or --overwrite a previous '
                              'demo')
    foreign = _not_demo_files(out) if held else []
    if foreign:
        raise FileExistsError(
            f'--out "{out}" is not a previous demo (it holds '
            f'"{foreign[0]}"): --overwrite replaces only a previous demo; '
            'choose another folder')
    data_root = osp.join(out, 'data')
    frames, masks = synthetic_video()
    write_davis_sequences(data_root, {DEMO_SEQUENCE: (frames, masks)})
    print(f'Generated a {len(frames)}-frame {frames[0].shape[1]}×'
          f'{frames[0].shape[0]} video with {int(masks[0].max())} objects: '
          f'{data_root}')
    results = osp.join(out, 'results')
    summary = run(
        args, osp.join(data_root, 'JPEGImages', '480p', DEMO_SEQUENCE),
        osp.join(data_root, 'Annotations', '480p', DEMO_SEQUENCE,
                 '00000.png'), osp.join(results, DEMO_SEQUENCE))
    scores = evaluate_davis_results(results, data_root, 'ImageSets/val.txt')
    report(summary, osp.join(results, DEMO_SEQUENCE))
    print('| J&F-Mean | J-Mean | J-Recall | F-Mean | F-Recall |')
    print('|---:|---:|---:|---:|---:|')
    print('| ' + ' | '.join(
        f'{scores[k]:.4f}'
        for k in ('J&F-Mean', 'J-Mean', 'J-Recall', 'F-Mean', 'F-Recall'))
          + ' |')


def _not_demo_files(out: str) -> list:
    """What ``out`` holds that a demo does not write (sorted, relative)."""
    foreign = []
    for root, dirs, files in os.walk(out):
        rel_root = osp.relpath(root, out)
        for name in sorted(files) + [
                d for d in sorted(dirs) if osp.islink(osp.join(root, d))
        ]:
            rel = osp.normpath(osp.join(rel_root, name)).replace(os.sep, '/')
            # A link could lead the demo's writes out of its folder.
            if (not _DEMO_FILE.fullmatch(rel)
                    or osp.islink(osp.join(root, name))):
                foreign.append(rel)
    return sorted(foreign)


def report(summary: dict, out_dir: str) -> None:
    what = ('keypoints.jsonl' if summary['label_kind'] == 'keypoints' else
            'one palette PNG per frame')
    random = [k for k, v in summary['weights'].items() if v == 'random init']
    if random:
        print(f'No checkpoint for {", ".join(random)}: randomly initialised '
              '(seeded; a baseline: give --checkpoint for the real thing).')
    of = (f' of {summary["source_frames"]}'
          if summary.get('source_frames') else '')
    after_first = summary.get('frames_per_second_after_first')
    steady = (f', {after_first:.2f} after the first frame\'s '
              f'{summary["first_frame_seconds"]:.2f} s'
              if after_first else '')
    print(f'Tracked {summary["frames"]}{of} frames at '
          f'{summary["frames_per_second"]:.2f} frames/s{steady} on '
          f'{summary["device"]} (peak RSS {summary["peak_rss_mib"]:.0f} '
          f'MiB): {what}, summary.json in {out_dir}')
    anchors = summary.get('anchors') or {}
    if anchors.get('given'):
        print(f'Anchors: {len(anchors["used"])} of {anchors["given"]} used '
              f'({", ".join(anchors["used"][:5])}'
              f'{", ..." if len(anchors["used"]) > 5 else ""}).')
    if not summary['complete']:
        print(f'Incomplete: {summary["incomplete_reason"]}.',
              file=sys.stderr)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.demo:
        demo(args)
    else:
        summary = run(args, args.source, args.first_labels, args.out)
        report(summary, args.out)


if __name__ == '__main__':
    run_tool(main, 'track.py',
             interrupted='Interrupted: no result was written.')
