"""End-to-end speed and peak memory of tools/track.py over long videos.

Builds a 480p frame folder by looping a shared DAVIS sequence (symbolic
links) to the longest requested length, then runs ``tools/track.py`` on it
once per (config, length) in a fresh process: frames decoded, tracked,
written as palette PNGs and into overlay.mp4. Reports the run's own
summary: frames/s end to end and the process's peak RSS. Streaming memory
must not grow with the video length.

With ``--precisions fp32 bf16`` each run is repeated per precision of the
torch path (``--precision``), side by side: frames/s, the speed-up over
fp32, peak RSS and the share of mask pixels equal to the fp32 run's; with
``--jf`` every sequence of the shared val split is also tracked at each
precision, and the mask agreement and J&F printed (same checkpoint).

    python benchmarks/track_video.py --configs fc_davis.py --frames 100 1000
    python benchmarks/track_video.py --configs fc_davis.py sfc_davis.py \
        --frames 30 --device cuda
    python benchmarks/track_video.py --frames 100 --precisions fp32 bf16 \
        --checkpoint fc.pth --jf
"""
import argparse
import json
import os
import os.path as osp
import platform
import subprocess
import sys
import tempfile
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DAVIS2016 = osp.join(REPO, '..', 'shared', 'data', 'davis2016')
sys.path.insert(0, REPO)  # this checkout's sfc_plugin, as in the children


def looped_folder(data_root: str, sequence: str, length: int,
                  out: str) -> str:
    """``out/frames`` with ``length`` links cycling through the sequence."""
    src = osp.join(data_root, 'JPEGImages', '480p', sequence)
    names = sorted(n for n in os.listdir(src) if n.endswith('.jpg'))
    if not names:
        raise SystemExit(f'No frames in "{src}"')
    folder = osp.join(out, 'frames')
    os.makedirs(folder)
    for i in range(length):
        os.symlink(osp.abspath(osp.join(src, names[i % len(names)])),
                   osp.join(folder, f'{i:05d}.jpg'))
    return folder


def tracking_source(frames: int, tmp: str, quick: bool = False):
    """(frame folder, first mask, description): the shared DAVIS-2016
    blackswan looped to ``frames`` frames, or, where the shared data are
    absent (a GPU machine) or with ``quick`` (96×160), a generated video
    written under ``tmp`` and looped."""
    data_root, sequence = DAVIS2016, 'blackswan'
    what = f'DAVIS-2016 blackswan looped to {frames} frames, 854×480'
    if quick or not osp.isdir(
            osp.join(data_root, 'JPEGImages', '480p', sequence)):
        from sfc_plugin.datasets import synthetic_video, write_davis_sequences
        size = (96, 160) if quick else (480, 854)
        data_root, sequence = osp.join(tmp, 'data'), 'generated'
        write_davis_sequences(
            data_root,
            {sequence: synthetic_video(min(frames, 40), size=size)})
        what = (f'generated video looped to {frames} frames, '
                f'{size[1]}×{size[0]}')
    folder = looped_folder(data_root, sequence, frames, tmp)
    first = osp.join(data_root, 'Annotations', '480p', sequence,
                     '00000.png')
    return folder, first, what


def writer_throughput(data_root: str, sequence: str, frames: int,
                      overlay: bool, out: str) -> float:
    """Frames/s TrackingResultsWriter sustains alone: the I/O ceiling of
    the job, whatever the tracker's speed."""
    import cv2

    from sfc_plugin.apis import TrackingResultsWriter
    from sfc_plugin.datasets import read_object_mask
    image = cv2.imread(osp.join(data_root, 'JPEGImages', '480p', sequence,
                                '00000.jpg'))
    mask = read_object_mask(osp.join(data_root, 'Annotations', '480p',
                                     sequence, '00000.png'))
    start = time.perf_counter()
    with TrackingResultsWriter(out, 'mask', overlay=overlay) as writer:
        for t in range(frames):
            writer.write(f'{t:05d}', image, mask)
        writer.commit({})
    return frames / (time.perf_counter() - start)


def agreement(reference: str, other: str) -> float:
    """Share of mask pixels of ``other`` equal to ``reference``'s."""
    from backend_agreement import masks_of
    ref, got = masks_of(reference), masks_of(other)
    same = sum(int((got[k] == v).sum()) for k, v in ref.items())
    return same / sum(v.size for v in ref.values())


def jf_by_precision(args, tmp: str) -> None:
    """Every sequence of the split at each precision: agreement and J&F."""
    from backend_agreement import print_agreement, track_split
    seconds = {}
    for precision in args.precisions:
        seconds[precision] = track_split(
            args.data_root, args.ann_file, osp.join(tmp, 'jf', precision),
            config=args.configs[0], checkpoint=args.checkpoint,
            device=args.device, precision=precision)
    print(f'\n{args.configs[0]} on {args.ann_file} of {args.data_root}, '
          f'checkpoint {args.checkpoint or "none (random init)"}:')
    print_agreement(list(args.precisions), osp.join(tmp, 'jf'),
                    args.data_root, args.ann_file, seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--configs', nargs='+', default=['fc_davis.py'],
                   help='tracker configs (files or shipped names)')
    p.add_argument('--frames', type=int, nargs='+', default=[100, 1000])
    p.add_argument('--data-root', default=DAVIS2016)
    p.add_argument('--sequence', default='blackswan')
    p.add_argument('--device', default='cpu')
    p.add_argument('--no-overlay', action='store_true')
    p.add_argument('--writer-frames', type=int, default=200,
                   help='frames for the writer-alone table (0: skip it)')
    p.add_argument('--precisions', nargs='+', default=['fp32'],
                   choices=['fp32', 'bf16', 'fp16'],
                   help='precisions of the torch path, the first the '
                   'reference of the agreement column')
    p.add_argument('--checkpoint', help='FC checkpoint (else random init)')
    p.add_argument('--jf', action='store_true',
                   help='also track the split at each precision: mask '
                   'agreement and J&F')
    p.add_argument('--ann-file', default='ImageSets/val.txt')
    args = p.parse_args()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO, os.environ.get('PYTHONPATH', '')]))
    first = osp.join(args.data_root, 'Annotations', '480p', args.sequence,
                     '00000.png')
    with tempfile.TemporaryDirectory(prefix='track_video_') as tmp:
        frames = looped_folder(args.data_root, args.sequence,
                               max(args.frames), tmp)
        print(f'{args.sequence} looped, 854×480, device {args.device}, '
              f'{platform.processor() or platform.machine()}, '
              f'{os.cpu_count()} CPUs, {time.strftime("%Y-%m-%d")}')
        print('| config | precision | frames | frames/s | s/frame | '
              f'speed-up over {args.precisions[0]} | peak RSS (MiB) | '
              f'pixels = {args.precisions[0]} |')
        print('|---|---|---:|---:|---:|---:|---:|---:|')
        for config in args.configs:
            for n in args.frames:
                reference = None
                for precision in args.precisions:
                    out = osp.join(
                        tmp, f'out_{osp.basename(config)}_{n}_{precision}')
                    cmd = [
                        sys.executable,
                        osp.join(REPO, 'tools', 'track.py'), frames, first,
                        '--out', out, '--config', config, '--max-frames',
                        str(n), '--device', args.device, '--quiet',
                        '--precision', precision
                    ] + (['--no-overlay'] if args.no_overlay else []) + (
                        ['--checkpoint', args.checkpoint]
                        if args.checkpoint else [])
                    proc = subprocess.run(cmd, env=env, capture_output=True,
                                          text=True)
                    if proc.returncode != 0:
                        raise SystemExit(proc.stdout + proc.stderr)
                    with open(osp.join(out, 'summary.json')) as f:
                        s = json.load(f)
                    fps = s['frames_per_second']
                    if reference is None:
                        reference = (fps, out)
                    same = agreement(reference[1], out)
                    print(f'| {osp.basename(config)} | {precision} | '
                          f'{s["frames"]} | {fps:.2f} | {1 / fps:.3f} | '
                          f'{fps / reference[0]:.2f}× | '
                          f'{s["peak_rss_mib"]:.0f} | {100 * same:.3f}% |',
                          flush=True)
        if args.jf:
            jf_by_precision(args, tmp)
        if args.writer_frames:
            print('\nResults writer alone (palette PNGs, overlay.mp4), '
                  f'{args.writer_frames} frames at 854×480:')
            print('| overlay | frames/s |')
            print('|---|---:|')
            for overlay in (True, False):
                fps = writer_throughput(
                    args.data_root, args.sequence, args.writer_frames,
                    overlay, osp.join(tmp, f'writer_{overlay}'))
                print(f'| {"yes" if overlay else "no"} | {fps:.1f} |')


if __name__ == '__main__':
    main()
