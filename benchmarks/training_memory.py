"""Host memory of a CPU training step: what the check estimates, what a
step takes.

For each batch size and crop, two fresh processes: one runs the training
memory check's estimate of the step (``cpu_step_memory``: the saved tensors
of probe forwards times ``STEP_OVERHEAD``, plus the loss's position-pair
workspace), the other one FC training step (``model.train_step`` on random
uint8 view pairs, Adam) and reports its peak RSS growth over the RSS before
the batch. Prints a Markdown table; estimate / measured must stay >= 1.

    python benchmarks/training_memory.py --cases 2x256 2x512 1x768
"""
import argparse
import json
import os.path as osp
import resource
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(REPO, 'configs', 'fc_ytvos.py')


def rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def build():
    import logging

    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmengine.optim import build_optim_wrapper

    from sfc_plugin.registry import MODELS
    from sfc_plugin.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(CONFIG)
    model = MODELS.build(cfg.model)
    logger = MMLogger.get_current_instance()
    logger.setLevel(logging.WARNING)
    model.init_weights()
    return model.train(), build_optim_wrapper(model, cfg.optim_wrapper)


def sample(crop: int) -> dict:
    import torch
    from mmengine.structures import BaseDataElement
    gen = torch.Generator().manual_seed(0)
    return dict(
        inputs=torch.randint(0, 256, (2, 3, crop, crop), dtype=torch.uint8,
                             generator=gen),
        data_samples=BaseDataElement(crop_boxes=torch.tensor(
            [[0.0, 0.0, 0.8, 0.8], [0.2, 0.1, 1.0, 0.9]])))


def child(kind: str, batch: int, crop: int) -> dict:
    import torch
    from mmengine.dataset import default_collate

    from sfc_plugin.engine.runner.training_memory import cpu_step_memory
    torch.manual_seed(0)
    model, optim_wrapper = build()
    one = sample(crop)
    if kind == 'estimate':
        fixed, per_sample = cpu_step_memory(model, default_collate, one)
        return dict(estimate=fixed + per_sample * batch,
                    workspace=model.loss_workspace_bytes(
                        default_collate([one])))
    data = default_collate([one] * batch)
    before = rss_bytes()
    model.train_step(data, optim_wrapper)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(growth=peak - before)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--cases', nargs='+', default=['2x256', '2x512', '1x768'],
                   help='BATCHxCROP')
    p.add_argument('--child', nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, batch, crop = args.child
        print(json.dumps(child(kind, int(batch), int(crop))))
        return
    mib = 2**20
    print('| batch, crop | pairs an image | workspace | estimate | peak RSS '
          'growth | estimate / growth |')
    print('|---|---:|---:|---:|---:|---:|')
    for case in args.cases:
        batch, crop = (int(v) for v in case.split('x'))
        runs = {}
        for kind in ('estimate', 'measure'):
            out = subprocess.run(
                [sys.executable, __file__, '--child', kind, str(batch),
                 str(crop)], capture_output=True, text=True, check=True)
            runs.update(json.loads(out.stdout.strip().splitlines()[-1]))
        pairs = (-(-crop // 8))**4
        print(f'| {batch}, {crop} | {pairs:.3g} | '
              f'{runs["workspace"] / mib:.0f} MiB | '
              f'{runs["estimate"] / mib:.0f} MiB | '
              f'{runs["growth"] / mib:.0f} MiB | '
              f'{runs["estimate"] / runs["growth"]:.2f} |', flush=True)


if __name__ == '__main__':
    main()
