"""FC training speed: iterations/s and images/s of the full training step.

Times ``model.train_step`` (preprocessing, online and target forwards, EMA
update, loss, backward, Adam step) on random uint8 view pairs, so data loading
is left out; prints a table (Markdown) with one row per batch size.

    python benchmarks/train_speed.py --batch-sizes 8 --iters 5
    python benchmarks/train_speed.py --device cuda --amp --batch-sizes 96 \
        --iters 50 --channels-last
"""
import argparse
import logging
import os.path as osp
import platform
import time

import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper
from mmengine.structures import BaseDataElement

from sfc_plugin.registry import MODELS
from sfc_plugin.utils import register_all_modules

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--config', default=osp.join(REPO, 'configs',
                                                'fc_ytvos.py'))
    p.add_argument('--batch-sizes', type=int, nargs='+', default=[8])
    p.add_argument('--crop', type=int, default=256)
    p.add_argument('--iters', type=int, default=5)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--device', default='cpu')
    p.add_argument('--amp', action='store_true',
                   help='AmpOptimWrapper (bf16 autocast) instead of fp32')
    p.add_argument('--channels-last', action='store_true')
    return p.parse_args()


def make_batch(batch_size, crop):
    boxes = torch.tensor([[0.0, 0.0, 0.8, 0.8], [0.2, 0.1, 1.0, 0.9]])
    return dict(
        inputs=torch.randint(0, 256, (batch_size, 2, 3, crop, crop),
                             dtype=torch.uint8),
        data_samples=[
            BaseDataElement(crop_boxes=boxes) for _ in range(batch_size)
        ])


def bench(cfg, batch_size, args):
    model = MODELS.build(cfg.model)
    # init_weights logs every parameter at INFO; keep the table readable.
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    model.init_weights()
    logger.setLevel(level)
    model.to(args.device).train()
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    wrapper_cfg = dict(cfg.optim_wrapper)
    if args.amp:
        wrapper_cfg.update(type='AmpOptimWrapper', dtype='bfloat16')
    optim_wrapper = build_optim_wrapper(model, wrapper_cfg)
    data = make_batch(batch_size, args.crop)
    sync = (torch.cuda.synchronize
            if args.device.startswith('cuda') else lambda: None)
    if args.device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        model.train_step(data, optim_wrapper)
    sync()
    start = time.perf_counter()
    for _ in range(args.iters):
        losses = model.train_step(data, optim_wrapper)
    sync()
    elapsed = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() / 2**30
            if args.device.startswith('cuda') else float('nan'))
    return args.iters / elapsed, losses['loss'].item(), peak


def main():
    args = parse_args()
    register_all_modules()
    cfg = Config.fromfile(args.config)
    if args.device.startswith('cuda'):
        torch.backends.cudnn.benchmark = True
        device = torch.cuda.get_device_name()
    else:
        device = f'{platform.processor() or platform.machine()}, ' \
                 f'{torch.get_num_threads()} threads'
    print(f'torch {torch.__version__}, device: {device}, crop {args.crop}, '
          f'{"AMP bf16" if args.amp else "fp32"}'
          f'{", channels_last" if args.channels_last else ""}')
    print('| batch | it/s | s/it | images/s | peak GPU mem (GiB) |')
    print('|---:|---:|---:|---:|---:|')
    for batch_size in args.batch_sizes:
        its, _, peak = bench(cfg, batch_size, args)
        print(f'| {batch_size} | {its:.3f} | {1 / its:.2f} | '
              f'{its * batch_size:.2f} | {peak:.1f} |')


if __name__ == '__main__':
    main()
