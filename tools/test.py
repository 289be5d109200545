"""Evaluate a checkpoint of sfc_plugin with mmengine's Runner.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR]
        [--cfg-options KEY=VALUE ...] [--launcher none|pytorch|slurm]

Evaluation over many videos shards across processes with
``torchrun --nproc_per_node=N tools/test.py ... --launcher pytorch``.
"""
import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction
from train import build_runner, prepare_distributed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir', help='the dir to save logs and evaluation results')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, as key=value pairs')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main(argv=None):
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    missing = [
        k for k in ('test_dataloader', 'test_cfg', 'test_evaluator')
        if cfg.get(k) is None
    ]
    if missing:
        raise SystemExit(f'{args.config} defines no {", ".join(missing)}: '
                         'it is not an evaluation config')
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'Checkpoint file not found: "{args.checkpoint}"')
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    if args.launcher != 'none':
        prepare_distributed(cfg)
    build_runner(cfg).test()


if __name__ == '__main__':
    main()
