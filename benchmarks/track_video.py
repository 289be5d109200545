"""End-to-end speed and peak memory of tools/track.py over long videos.

Builds a 480p frame folder by looping a shared DAVIS sequence (symbolic
links) to the longest requested length, then runs ``tools/track.py`` on it
once per (config, length) in a fresh process: frames decoded, tracked,
written as palette PNGs and into overlay.mp4. Reports the run's own
summary: frames/s end to end and the process's peak RSS. Streaming memory
must not grow with the video length.

    python benchmarks/track_video.py --configs fc_davis.py --frames 100 1000
    python benchmarks/track_video.py --configs fc_davis.py sfc_davis.py \
        --frames 30 --device cuda
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
        print('| config | frames | frames/s | s/frame | peak RSS (MiB) |')
        print('|---|---:|---:|---:|---:|')
        for config in args.configs:
            for n in args.frames:
                out = osp.join(tmp, f'out_{osp.basename(config)}_{n}')
                cmd = [
                    sys.executable,
                    osp.join(REPO, 'tools', 'track.py'), frames, first,
                    '--out', out, '--config', config, '--max-frames',
                    str(n), '--device', args.device, '--quiet'
                ] + (['--no-overlay'] if args.no_overlay else [])
                proc = subprocess.run(cmd, env=env, capture_output=True,
                                      text=True)
                if proc.returncode != 0:
                    raise SystemExit(proc.stdout + proc.stderr)
                with open(osp.join(out, 'summary.json')) as f:
                    s = json.load(f)
                print(f'| {osp.basename(config)} | {s["frames"]} | '
                      f'{s["frames_per_second"]:.2f} | '
                      f'{1 / s["frames_per_second"]:.3f} | '
                      f'{s["peak_rss_mib"]:.0f} |', flush=True)
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
