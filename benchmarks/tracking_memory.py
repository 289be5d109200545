"""Peak memory and speed of streaming label propagation over long videos.

Streams the frames of a DAVIS sequence, looped to the requested length, at
its native resolution through SFCTracker (a config's model, random weights
unless a checkpoint field is set) and reports, per video length, the peak RSS
of a fresh child process and the time per frame. Memory must not grow with
the video length.

    python benchmarks/tracking_memory.py --config configs/sfc_davis.py \
        --frames 50 200
"""
import argparse
import json
import os
import os.path as osp
import resource
import subprocess
import sys
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_SEQ = osp.join(REPO, '..', 'shared', 'data', 'davis2016')


def worker(args) -> dict:
    import cv2
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from sfc_plugin.datasets import read_object_mask
    from sfc_plugin.registry import MODELS

    init_default_scope('sfc_plugin')
    cfg = Config.fromfile(args.config)
    tracker = MODELS.build(cfg.model).eval()
    seq = args.sequence
    frames_dir = osp.join(args.data_root, 'JPEGImages', '480p', seq)
    names = sorted(os.listdir(frames_dir))
    labels = torch.from_numpy(read_object_mask(osp.join(
        args.data_root, 'Annotations', '480p', seq,
        osp.splitext(names[0])[0] + '.png'))).long()
    prep = tracker.data_preprocessor

    def load(i):
        img = cv2.imread(osp.join(frames_dir, names[i % len(names)]))
        data = prep(dict(inputs=[torch.from_numpy(img).permute(2, 0, 1)]),
                    False)
        return data['inputs'][0]

    with torch.no_grad():
        tracker.init(load(0), labels)
        start = time.perf_counter()
        for t in range(1, args.worker_frames):
            tracker.track(load(t))
        elapsed = time.perf_counter() - start
    return dict(
        frames=args.worker_frames,
        seconds_per_frame=elapsed / max(args.worker_frames - 1, 1),
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss /
        1024)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--config', default=osp.join(REPO, 'configs',
                                                'sfc_davis.py'))
    p.add_argument('--data-root', default=DEFAULT_SEQ)
    p.add_argument('--sequence', default='blackswan')
    p.add_argument('--frames', type=int, nargs='+', default=[50, 200])
    p.add_argument('--worker-frames', type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker_frames:
        print(json.dumps(worker(args)))
        return
    print(f'{osp.basename(args.config)}, sequence {args.sequence} looped')
    print('| frames | s/frame | peak RSS (MiB) |')
    print('|---:|---:|---:|')
    for n in args.frames:
        proc = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], '--worker-frames',
             str(n)], capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f'| {n} | {r["seconds_per_frame"]:.2f} | '
              f'{r["peak_rss_mib"]:.0f} |')


if __name__ == '__main__':
    main()
