"""Train a model of sfc_plugin with mmengine's Runner.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
        [--cfg-options KEY=VALUE ...] [--launcher none|pytorch|slurm]

Multi-GPU / multi-node: ``torchrun --nproc_per_node=N tools/train.py CONFIG
--launcher pytorch`` or ``srun ... tools/train.py CONFIG --launcher slurm``
(or the same through ``mim train sfc_plugin CONFIG --launcher ...``).
"""
import argparse
import math
import os
import os.path as osp

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.runner import Runner

from sfc_plugin.registry import OPTIMIZERS, RUNNERS
from sfc_plugin.utils import config as config_io
from sfc_plugin.utils.cli import (
    ConfigOptionsAction,
    add_debug_argument,
    run_tool,
)
from sfc_plugin.utils.fileio import check_output_location, is_within

# A child of mmengine's RUNNERS: finds SFCRunner and every mmengine runner.
from sfc_plugin.utils.validation import check_integer, check_real


def add_runner_args(parser: argparse.ArgumentParser) -> None:
    """Options that tools/train.py and tools/test.py share."""
    parser.add_argument(
        '--work-dir', help='the dir to save logs, models and results')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=ConfigOptionsAction,
        help='override settings of the config, as key=value pairs; '
        'e.g. train_dataloader.batch_size=8 train_cfg.max_iters=40')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    # torch.distributed.launch passes --local-rank (older: --local_rank).
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    add_debug_argument(parser)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    add_runner_args(parser)
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from the given checkpoint; with no value, from the '
        'latest checkpoint in the work dir')
    parser.add_argument(
        '--amp',
        action='store_true',
        default=False,
        help='enable automatic mixed precision training (needs a GPU)')
    parser.add_argument(
        '--sync-bn',
        action='store_true',
        help='convert BatchNorm to SyncBatchNorm in distributed training')
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def load_config(args) -> Config:
    """The config with the shared options (launcher, overrides, work dir),
    its ``env_cfg`` checked (:func:`~sfc_plugin.utils.config.check_env_cfg`)
    since the Runner applies it unchecked."""
    if not os.path.isfile(args.config):
        raise FileNotFoundError(f'Config not found: "{args.config}"')
    cfg = config_io.load_config(args.config, args.cfg_options)
    config_io.check_env_cfg(cfg)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    return cfg


def check_outputs(cfg: Config, split: str, **inputs) -> None:
    """Refuses, before the Runner starts, outputs that would write into the
    data or over the checkpoint a run reads: a work dir inside the data
    root or a ``data_prefix`` folder, or a results folder
    (``test_evaluator.output_dir``, written with one file per frame) that
    is, holds or lies inside one of those folders or an input file. A
    work dir only ever gains new files, so holding its own checkpoints
    (``--resume``) is fine.

    Args:
        cfg (Config): The full config.
        split (str): 'train' or 'test': whose dataloader's data root.
        **inputs: Input files by what they are (``checkpoint=path``).
    """
    loader = cfg.get(f'{split}_dataloader') or {}
    dataset = loader.get('dataset') or {}
    folders = data_folders(dataset)
    for what, folder in folders.items():
        if is_within(cfg.work_dir, folder):
            raise ValueError(
                f'work_dir "{cfg.work_dir}" lies inside the {what} '
                f'"{folder}": logs and checkpoints would be written among '
                'the data; choose another --work-dir')
    # mmengine writes the config it ran into the work dir, under the
    # config's own name.
    if cfg.filename:
        check_output_location(
            osp.join(cfg.work_dir, osp.basename(cfg.filename)),
            config_io.config_inputs(cfg), 'The config copy the run writes')
    load_from = cfg.get('load_from') or None
    if (split == 'train' and load_from and not cfg.get('resume')
            and is_within(load_from, cfg.work_dir)):
        raise ValueError(
            f'load_from "{load_from}" lies inside work_dir "{cfg.work_dir}", '
            'where this run saves its own checkpoints (iter_2.pth ...): it '
            'could be overwritten; copy it out, or choose another --work-dir '
            '(or --resume it to continue that run)')
    evaluator = cfg.get('test_evaluator') if split == 'test' else None
    read = {what.replace('_', ' '): path for what, path in dict(
        inputs, load_from_checkpoint=load_from).items()}
    read.update(folders)
    for metric in (evaluator if isinstance(evaluator, list) else
                   [evaluator] if evaluator else []):
        output_dir = metric.get('output_dir')
        if output_dir:
            check_output_location(output_dir, read,
                                  'test_evaluator.output_dir')


def data_folders(dataset: dict) -> dict:
    """The folders a dataset config reads, by what they are: its
    ``data_root`` and each ``data_prefix`` (an absolute prefix does not
    lie under the root)."""
    root = dataset.get('data_root') or ''
    folders = {'data root': root} if root else {}
    prefix = dataset.get('data_prefix') or {}
    if isinstance(prefix, str):
        prefix = {'path': prefix}
    for key, value in (prefix.items() if isinstance(prefix, dict) else ()):
        if isinstance(value, str) and value:
            folders[f'data_prefix.{key} folder'] = osp.join(root, value)
    return folders


def merge_args(cfg: Config, args) -> Config:
    """Applies the training switches to the config."""
    if args.amp:
        if not torch.cuda.is_available():
            raise RuntimeError('--amp needs a CUDA GPU; none is available')
        wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper == 'AmpOptimWrapper':
            print('AMP is already enabled in the config.')
        elif wrapper != 'OptimWrapper':
            raise ValueError(f'--amp needs optim_wrapper.type OptimWrapper, '
                             f'the config has {wrapper}')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')

    if args.sync_bn:
        if not torch.cuda.is_available():
            raise RuntimeError('--sync-bn needs CUDA GPUs (SyncBatchNorm '
                               'has no CPU implementation)')
        cfg.sync_bn = 'torch'

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    if args.launcher != 'none':
        prepare_distributed(cfg)
    return cfg


def prepare_distributed(cfg: Config) -> None:
    """Lets the launchers also run on machines without CUDA.

    mmengine's launchers assume CUDA: they call ``torch.cuda.set_device`` and
    give DDP a device id. Without a GPU the process group is created here with
    gloo from the launcher's environment (torchrun sets it; for slurm it is
    derived from the SLURM variables), and DDP gets no device id.
    """
    if torch.cuda.is_available() or dist.is_initialized():
        return
    env = cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    env['backend'] = 'gloo'
    if cfg.launcher == 'slurm':
        os.environ.setdefault('RANK', os.environ['SLURM_PROCID'])
        os.environ.setdefault('WORLD_SIZE', os.environ['SLURM_NTASKS'])
        os.environ.setdefault('LOCAL_RANK', os.environ['SLURM_LOCALID'])
        os.environ.setdefault('MASTER_PORT', '29500')
        if 'MASTER_ADDR' not in os.environ:
            import subprocess
            node_list = os.environ['SLURM_NODELIST']
            os.environ['MASTER_ADDR'] = subprocess.getoutput(
                f'scontrol show hostname {node_list} | head -n1')
    dist.init_process_group(backend='gloo')
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False)
    wrapper.setdefault('find_unused_parameters',
                       cfg.get('find_unused_parameters', False))
    # The Runner's default device_ids=[LOCAL_RANK] is refused by DDP for a
    # CPU module; an explicit None in the config takes precedence.
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper


def build_runner(cfg: Config) -> Runner:
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def check_train_loop(cfg: Config) -> None:
    """Settings that mmengine or torch would take badly, named: the loop's
    lengths are integers >= 1 (mmengine took max_iters=0 or -5 as a run that
    trains nothing and succeeds, and NaN as a failed int conversion naming
    no setting); the learning rate a finite number >= 0 and the optimiser a
    registered one (lr=abc was a TypeError of torch, type=Adamm "None is
    not a callable object"); the seed and the loader's prefetch_factor
    integers."""
    if not isinstance(cfg.get('model'), dict):
        raise ValueError(f'Config "{cfg.filename}" defines no model')
    for key in ('max_iters', 'max_epochs', 'val_interval'):
        if key in (cfg.get('train_cfg') or {}):
            check_integer('config', f'train_cfg.{key}', cfg.train_cfg[key],
                          low=1)
    optimizer = (cfg.get('optim_wrapper') or {}).get('optimizer') or {}
    if isinstance(optimizer, dict):
        kind = optimizer.get('type')
        if isinstance(kind, str) and OPTIMIZERS.get(kind) is None:
            raise ValueError(
                f'optim_wrapper.optimizer.type "{kind}" is not a registered '
                'optimizer (torch.optim\'s: Adam, AdamW, SGD, ...)')
        if 'lr' in optimizer:
            lr = check_real('config', 'optim_wrapper.optimizer.lr',
                            optimizer['lr'])
            if not (math.isfinite(lr) and lr >= 0):
                raise ValueError('config: optim_wrapper.optimizer.lr must be '
                                 f'a finite number >= 0, got {lr}')
    seed = (cfg.get('randomness') or {}).get('seed')
    if seed is not None:
        check_integer('config', 'randomness.seed', seed, low=0,
                      high=2**32 - 1)
    loader = cfg.get('train_dataloader') or {}
    if loader.get('prefetch_factor') is not None:
        check_integer('config', 'train_dataloader.prefetch_factor',
                      loader['prefetch_factor'], low=1, high=1024)


def main(argv=None):
    args = parse_args(argv)
    cfg = merge_args(load_config(args), args)
    check_train_loop(cfg)
    check_outputs(cfg, 'train')
    runner = build_runner(cfg)
    runner.train()


if __name__ == '__main__':
    run_tool(main, 'train.py')
