"""Encoder latency per frame: PyTorch vs ONNX Runtime, side by side.

Random weights (latency does not depend on them), one 854×480 frame per
call, best of ``--repeats`` after a warm-up, each backend in this process
one after the other. On a GPU, ``--device cuda`` adds torch.compile and
CUDA-graph variants and fp16/bf16. Prints a Markdown table.

    python benchmarks/backbone_latency.py --configs configs/fc_davis.py \\
        configs/sfc_davis.py
"""
import argparse
import copy
import os.path as osp
import tempfile

import torch
from mmengine.config import Config
from propagation_step import best_seconds

from sfc_plugin.deploy import build_encoder, export_onnx
from sfc_plugin.deploy.backends import ONNXRuntimeBackend
from sfc_plugin.utils import register_all_modules


def best_time(fn, x, repeats, device):
    """Shortest time of ``fn(x)`` without autograd, after a warm-up."""
    with torch.no_grad():
        fn(x)
        return best_seconds(lambda: fn(x), device, repeats)


def variants(encoder, onnx_path, device):
    """name -> callable on a float32 (1, 3, H, W) batch on ``device``."""
    out = {'torch eager fp32': encoder}
    if device.type == 'cuda':
        for dtype, tag in ((torch.float16, 'fp16'), (torch.bfloat16,
                                                     'bf16')):
            half = copy.deepcopy(encoder).to(dtype)
            out[f'torch eager {tag}'] = lambda x, m=half, d=dtype: m(x.to(d))
        out['torch compiled fp32'] = torch.compile(encoder)
        out['torch compiled + CUDA graphs fp32'] = torch.compile(
            encoder, mode='reduce-overhead')
    out[f'onnxruntime {device.type} fp32'] = ONNXRuntimeBackend(
        onnx_path, device=device.type)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--configs', nargs='+',
                   default=['configs/fc_davis.py', 'configs/sfc_davis.py'])
    p.add_argument('--device', default='cpu')
    p.add_argument('--size', type=int, nargs=2, default=(480, 854))
    p.add_argument('--repeats', type=int, default=3)
    args = p.parse_args()
    register_all_modules()
    device = torch.device(args.device)
    x = torch.randn(1, 3, *args.size, device=device)
    print(f'torch {torch.__version__}, {args.device}, '
          f'{torch.get_num_threads()} threads, frame {args.size[1]}×'
          f'{args.size[0]}, best of {args.repeats}')
    print('| config | backend | ms/frame | vs torch eager fp32 |')
    print('|---|---|---:|---:|')
    for path in args.configs:
        cfg = Config.fromfile(path)
        encoder = build_encoder(cfg).to(device)
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = osp.join(tmp, 'encoder.onnx')
            export_onnx(encoder.cpu(), (x.cpu(), ), onnx_path, ['images'],
                        ['features'],
                        dict(images={0: 'b', 2: 'h', 3: 'w'}))
            encoder.to(device)
            base = None
            for name, fn in variants(encoder, onnx_path, device).items():
                seconds = best_time(fn, x, args.repeats, device)
                base = base or seconds
                print(f'| {osp.basename(path)} | {name} | {1e3 * seconds:.1f} '
                      f'| {base / seconds:.2f}× |')


if __name__ == '__main__':
    main()
