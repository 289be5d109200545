"""Evaluate a checkpoint of sfc_plugin with mmengine's Runner.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR]
        [--cfg-options KEY=VALUE ...] [--launcher none|pytorch|slurm]

Evaluation over many videos shards across processes with
``torchrun --nproc_per_node=N tools/test.py ... --launcher pytorch``.
"""
import argparse
import os

from train import (
    add_runner_args,
    build_runner,
    check_outputs,
    load_config,
    prepare_distributed,
)

from sfc_plugin.apis import (
    apply_backend,
    apply_checkpoint,
    check_backend_checkpoint,
)
from sfc_plugin.utils.cli import run_tool


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument(
        'checkpoint',
        nargs='?',
        help='checkpoint file; configs with `checkpoint_field` load it into '
        'that part of the model (e.g. the FC encoder), others into the whole '
        'model (load_from). Without it the networks keep their random '
        'initialisation (a baseline)')
    add_runner_args(parser)
    parser.add_argument(
        '--backend',
        choices=['torch', 'onnxruntime', 'tensorrt'],
        help='where the encoder runs (default: the config\'s model.backend, '
        'else torch); onnxruntime and tensorrt need --backend-model')
    parser.add_argument(
        '--backend-model',
        help='ONNX file (export/to_onnx.py) or TensorRT engine '
        '(export/to_trt.py) for --backend')
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args)
    missing = [
        k for k in ('test_dataloader', 'test_cfg', 'test_evaluator')
        if cfg.get(k) is None
    ]
    if missing:
        raise ValueError(f'{args.config} defines no {", ".join(missing)}: '
                         'it is not an evaluation config')
    if args.checkpoint is None:
        print('No checkpoint given: the networks are randomly initialised.')
    else:
        apply_checkpoint(cfg, args.checkpoint)
    apply_backend(cfg, args.backend, args.backend_model)
    check_backend_checkpoint(cfg, args.checkpoint)
    check_outputs(cfg, 'test', checkpoint=args.checkpoint,
                  backend_model=args.backend_model)
    if args.launcher != 'none':
        prepare_distributed(cfg)
    build_runner(cfg).test()


if __name__ == '__main__':
    run_tool(main, 'test.py')
