"""FC training speed: iterations/s and images/s of the full training step.

Times ``model.train_step`` (preprocessing, online and target forwards, EMA
update, loss, backward, Adam step) on random uint8 view pairs, so data loading
is left out; prints a table (Markdown) with one row per batch size.

``--variants`` times, side by side in one process, the ways of running the
mixed-precision step that could matter on a GPU: mmengine's AmpOptimWrapper
(bf16 autocast with its GradScaler, whose inf check reads a GPU value back
every step), bf16 autocast without a scaler (bf16 needs no loss scaling),
and Adam's fused CUDA implementation. ``--profile`` adds the training FLOPs
of a step (counted by ``torch.utils.flop_counter``) and, on CUDA, the share
of the step the GPU is busy and the kernels that take its time
(``torch.profiler``).

    python benchmarks/train_speed.py --batch-sizes 8 --iters 5
    python benchmarks/train_speed.py --device cuda --amp --batch-sizes 96 \\
        --iters 50 --channels-last
    python benchmarks/train_speed.py --device cuda --amp --channels-last \\
        --batch-sizes 96 --variants --profile
"""
import argparse
import contextlib
import logging
import os.path as osp
import platform
import time

import torch
from device_profile import device_profile, print_kernel_table
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper
from mmengine.structures import BaseDataElement

from sfc_plugin.registry import MODELS
from sfc_plugin.utils import register_all_modules

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

#: name -> (optimiser wrapper, fused Adam); 'amp' is the --amp default.
VARIANTS = {
    'amp': ('AmpOptimWrapper', False),
    'autocast-no-scaler': ('autocast', False),
    'amp-fused-adam': ('AmpOptimWrapper', True),
}


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
    p.add_argument('--channels-last', action='store_true',
                   help='the model option channels_last=True')
    p.add_argument('--variants', action='store_true',
                   help='time every entry of VARIANTS (CUDA; implies --amp)')
    p.add_argument('--profile', action='store_true',
                   help='FLOPs per step and, on CUDA, the busiest kernels')
    return p.parse_args()


def make_batch(batch_size, crop):
    boxes = torch.tensor([[0.0, 0.0, 0.8, 0.8], [0.2, 0.1, 1.0, 0.9]])
    return dict(
        inputs=torch.randint(0, 256, (batch_size, 2, 3, crop, crop),
                             dtype=torch.uint8),
        data_samples=[
            BaseDataElement(crop_boxes=boxes) for _ in range(batch_size)
        ])


def build(cfg, args, variant=None):
    """(model, optimiser wrapper, step context) for ``variant`` (a key of
    :data:`VARIANTS`; None: AmpOptimWrapper if ``args.amp``, else the
    config's wrapper)."""
    # As a user would ask for it: --cfg-options model.channels_last=True.
    model = MODELS.build(dict(cfg.model, channels_last=args.channels_last))
    # init_weights logs every parameter at INFO; keep the table readable.
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    model.init_weights()
    logger.setLevel(level)
    model.to(args.device).train()
    if variant is None:
        variant = 'amp' if args.amp else None
    wrapper, fused = VARIANTS[variant] if variant else (None, False)
    wrapper_cfg = dict(cfg.optim_wrapper)
    wrapper_cfg['optimizer'] = dict(wrapper_cfg['optimizer'])
    if fused:
        wrapper_cfg['optimizer']['fused'] = True
    context = contextlib.nullcontext
    if wrapper == 'AmpOptimWrapper':
        wrapper_cfg.update(type='AmpOptimWrapper', dtype='bfloat16')
    elif wrapper == 'autocast':
        # What AmpOptimWrapper.optim_context does, without the scaler.
        device_type = torch.device(args.device).type
        context = lambda: torch.autocast(device_type,  # noqa: E731
                                         dtype=torch.bfloat16)
    optim_wrapper = build_optim_wrapper(model, wrapper_cfg)
    return model, optim_wrapper, context


def bench(cfg, batch_size, args, variant=None):
    """(iterations/s, last loss, peak GPU GiB) of ``variant``."""
    model, optim_wrapper, context = build(cfg, args, variant)
    data = make_batch(batch_size, args.crop)
    cuda = args.device.startswith('cuda')
    sync = torch.cuda.synchronize if cuda else lambda: None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        with context():
            model.train_step(data, optim_wrapper)
    sync()
    start = time.perf_counter()
    for _ in range(args.iters):
        with context():
            losses = model.train_step(data, optim_wrapper)
    sync()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float('nan')
    return args.iters / elapsed, losses['loss'].item(), peak


def step_flops(cfg, batch_size, args) -> float:
    """FLOPs of one training step (forwards, backward; the optimiser's and
    the EMA's element-wise work is not counted), by
    ``torch.utils.flop_counter`` on a step of the chosen settings."""
    from torch.utils.flop_counter import FlopCounterMode
    model, optim_wrapper, context = build(cfg, args)
    data = make_batch(batch_size, args.crop)
    counter = FlopCounterMode(display=False)
    with counter, context():
        model.train_step(data, optim_wrapper)
    return float(counter.get_total_flops())


def profile_kernels(cfg, batch_size, args, steps=3, top=15):
    """The GPU's share of a step and its busiest kernels, over ``steps``
    steps after a warm-up (:func:`device_profile.device_profile`, per
    step)."""
    model, optim_wrapper, context = build(cfg, args)
    data = make_batch(batch_size, args.crop)

    def run(n):
        for _ in range(n):
            with context():
                model.train_step(data, optim_wrapper)

    run(2)
    return device_profile(lambda: run(steps), steps, args.device, top)


def main():
    args = parse_args()
    register_all_modules()
    cfg = Config.fromfile(args.config)
    cuda = args.device.startswith('cuda')
    if args.variants and not cuda:
        raise SystemExit('train_speed: --variants needs a CUDA device '
                         '(AmpOptimWrapper refuses to run without one)')
    if cuda:
        torch.backends.cudnn.benchmark = True
        device = torch.cuda.get_device_name()
    else:
        device = f'{platform.processor() or platform.machine()}, ' \
                 f'{torch.get_num_threads()} threads'
    args.amp = args.amp or args.variants
    print(f'torch {torch.__version__}, device: {device}, crop {args.crop}, '
          f'{"AMP bf16" if args.amp else "fp32"}'
          f'{", channels_last" if args.channels_last else ""}')
    variants = list(VARIANTS) if args.variants else [None]
    print('| batch | variant | it/s | s/it | images/s | peak GPU mem (GiB) |')
    print('|---:|---|---:|---:|---:|---:|')
    for batch_size in args.batch_sizes:
        for variant in variants:
            its, _, peak = bench(cfg, batch_size, args, variant)
            print(f'| {batch_size} | {variant or "config"} | {its:.3f} | '
                  f'{1 / its:.2f} | {its * batch_size:.2f} | {peak:.1f} |')
    if args.profile:
        batch_size = args.batch_sizes[-1]
        flops = step_flops(cfg, batch_size, args)
        print(f'\nbatch {batch_size}: {flops / 1e12:.2f} TFLOP per step')
        if cuda:
            prof = profile_kernels(cfg, batch_size, args)
            print(f'GPU busy {prof["busy_ms"]:.1f} ms of a '
                  f'{prof["wall_ms"]:.1f} ms step')
            print_kernel_table(prof, 'step')


if __name__ == '__main__':
    main()
