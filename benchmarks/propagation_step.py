"""One label-propagation step (``topk_window_match``) at DAVIS 480p.

Random unit-norm features of a 60×107 grid (854×480 at stride 8), T = 1 + m
key frames (channels-last, as LabelPropagator keeps them), first frame
unrestricted. Each implementation runs in a fresh child process, so the
peak RSS it adds over its inputs is its own; outputs are checked against
each other. ``native-bf16`` gives the native kernel bf16 features (float32
accumulation, float32 labels), converted before the clock starts, as a
propagator that keeps its features in bf16 would hold them; on CPU its
header line names the micro-kernel that ran (``avx512_bf16`` or the
float32 path). The rate column counts only eligible products (2·C FLOPs
per eligible query-key pair) and is compared with this machine's fp32
matmul rate, measured in the same run. Prints a Markdown table; the
"vs native" column is the speed-up over the ``native`` (float32) row.
``decomposed`` is the standard-op form in PyTorch, ``onnx-decomposed`` its
exported graph in ONNX Runtime (CPU; the session is made before the
count; ``--ort-arena off`` turns its CPU memory arena off): their peaks
are compared with ``decomposed_bytes``, the estimate that refuses a dense
form the memory left cannot hold.

    python benchmarks/propagation_step.py --channels 256 1280 \\
        --impl native native-bf16
    python benchmarks/propagation_step.py --channels 256 1280 \\
        --impl native reference dense
    python benchmarks/propagation_step.py --device cuda --channels 1280 \\
        --impl native native-bf16 reference
    python benchmarks/propagation_step.py --channels 64 --height 40 \\
        --width 40 --frames 20 --impl native decomposed onnx-decomposed
"""
import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from sfc_plugin.ops import (
    cpu_bf16_kernel,
    cuda_kernel_config,
    decomposed_bytes,
    native_ops_available,
    topk_window_match,
    topk_window_match_decomposed,
    topk_window_match_dense,
    topk_window_match_reference,
    window_mask,
)
from sfc_plugin.utils.fileio import write_json


def decomposed(query, keys, labels, **kw):
    return topk_window_match_decomposed(query[None], keys[None],
                                        labels[None], **kw)[0]


def onnx_decomposed(args, channels):
    """The exported decomposition in an ONNX Runtime session (made here,
    outside the count), as a function of the step's inputs."""
    import tempfile

    import onnxruntime

    from sfc_plugin.deploy import (
        PropagationStep,
        export_propagation_step,
        onnxruntime_session,
    )
    from sfc_plugin.deploy.propagation_step import (
        INPUT_NAMES,
        example_inputs,
    )
    step = PropagationStep(args.topk, args.radius, 0.05, form='decomposed')
    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = args.ort_arena == 'on'
    with tempfile.TemporaryDirectory() as tmp:
        session = onnxruntime_session(export_propagation_step(
            step, f'{tmp}/step.onnx',
            inputs=example_inputs(channels, num_labels=args.labels)),
            sess_options=options)

    def run(query, keys, labels, **kw):
        feed = [x[None].contiguous().numpy() for x in (query, keys, labels)]
        return torch.from_numpy(
            session.run(None, dict(zip(INPUT_NAMES, feed)))[0][0])

    return run


#: name -> (function, feature dtype); labels stay float32.
IMPLS = {
    'native': (topk_window_match, torch.float32),
    'native-bf16': (topk_window_match, torch.bfloat16),
    'reference': (topk_window_match_reference, torch.float32),
    'dense': (topk_window_match_dense, torch.float32),
    'decomposed': (decomposed, torch.float32),
    'onnx-decomposed': (onnx_decomposed, torch.float32),
}


def _status_mib(field: str) -> float:
    with open('/proc/self/status') as f:
        line = next(x for x in f if x.startswith(field + ':'))
    return int(line.split()[1]) / 1024


def reset_peak_rss() -> float:
    """Resets the peak RSS to the current RSS (Linux) and returns it; the
    inputs' own temporaries must not hide what an implementation adds."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return _status_mib('VmRSS')
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mib() -> float:
    try:
        return _status_mib('VmHWM')
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def best_seconds(call, device, repeats: int) -> float:
    """Shortest wall time of ``call()`` over ``repeats`` runs, the device
    synchronised before and after each; the caller warms up."""
    best = float('inf')
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        call()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def add_step_arguments(p: argparse.ArgumentParser) -> None:
    """The step's size, as :func:`inputs` and :func:`eligible_pairs` read
    it: the 60×107 feature map of a 480p frame, T = 21, and the channel
    counts to run."""
    p.add_argument('--channels', type=int, nargs='+', default=[256, 1280])
    p.add_argument('--height', type=int, default=60)
    p.add_argument('--width', type=int, default=107)
    p.add_argument('--frames', type=int, default=21, help='T = 1 + m')


def kernel_benchmark_parser(description: str) -> argparse.ArgumentParser:
    """The arguments the CUDA kernel's benchmarks share
    (``cuda_kernel_configs.py``, ``cuda_frame_groups.py``): the device, the
    step's size, k and r' (SFC's DAVIS setting by default), the repeats
    and a JSON output."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument('--device', default='cuda')
    add_step_arguments(p)
    p.add_argument('--topk', type=int, default=15)
    p.add_argument('--radius', type=float, default=15.0)
    p.add_argument('--repeats', type=int, default=10)
    p.add_argument('--out', help='also write the rows as JSON here')
    return p


def cuda_kernel_device(script: str, name: str) -> torch.device:
    """The device named ``name``, where the CUDA kernel runs; otherwise
    exits with a message that names ``script``."""
    device = torch.device(name)
    if device.type != 'cuda' or not native_ops_available(device):
        sys.exit(f'{script}: needs the CUDA kernel, and {device} has none '
                 '(a CUDA device and `python -m sfc_plugin.ops` to build '
                 'it)')
    return device


def inputs(args, channels, device):
    gen = torch.Generator().manual_seed(0)
    h, w, t = args.height, args.width, args.frames
    query = F.normalize(torch.randn(channels, h, w, generator=gen), dim=0)
    keys = F.normalize(torch.randn(t, channels, h, w, generator=gen), dim=1)
    keys = keys.contiguous(memory_format=torch.channels_last)
    labels = torch.softmax(torch.randn(t, args.labels, h, w, generator=gen),
                           1)
    return query.to(device), keys.to(device), labels.to(device)


def eligible_pairs(args) -> int:
    """Query-key pairs the definition scores: every position of the first
    frame plus each window of the other T - 1 frames."""
    windows = int(window_mask(args.height, args.width, args.radius).sum())
    hw = args.height * args.width
    return hw * hw + (args.frames - 1) * windows


def matmul_rate(device, n=4096, repeats=5) -> float:
    """The machine's fp32 GFLOP/s: an n³ product (BLAS / cuBLAS at their
    best), best of ``repeats``; TF32 off so that it is the fp32 rate."""
    torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    return 2 * n**3 / best_seconds(lambda: a @ b, device, repeats) / 1e9


def bandwidth(device, mib=1024) -> float:
    """GB/s of a device-to-device copy (read + write), best of 5."""
    x = torch.empty(mib * 2**20 // 4, device=device)
    y = torch.empty_like(x)
    return 2 * x.numel() * 4 / best_seconds(lambda: y.copy_(x), device,
                                            5) / 1e9


def worker(args) -> None:
    device = torch.device(args.device)
    fn, dtype = IMPLS[args.worker_impl]
    if fn is onnx_decomposed:
        if device.type != 'cpu':
            sys.exit('onnx-decomposed runs on the CPU (--device cpu)')
        fn = onnx_decomposed(args, args.worker_channels)
    query, keys, labels = inputs(args, args.worker_channels, device)
    # Converted before the clock starts; .to keeps the keys channels-last
    # and drops the float32 copies.
    query, keys = query.to(dtype), keys.to(dtype)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.max_memory_allocated(device) / 2**20
    kw = dict(topk=args.topk, radius=args.radius, temperature=0.05)
    if args.worker_impl.startswith('native'):
        native_ops_available(device)  # load the kernel outside the count
    if device.type != 'cuda':
        before = reset_peak_rss()
    out = fn(query, keys, labels, **kw)  # warm-up
    seconds = best_seconds(lambda: fn(query, keys, labels, **kw), device,
                           args.repeats)
    if device.type == 'cuda':
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = peak_rss_mib()
    torch.save(out.float().cpu(), args.worker_out)
    print(json.dumps(dict(seconds=seconds, peak_mib=peak,
                          extra_mib=peak - before)))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--impl', nargs='+',
                   default=['native', 'native-bf16', 'reference', 'dense'],
                   choices=sorted(IMPLS))
    p.add_argument('--device', default='cpu')
    add_step_arguments(p)
    p.add_argument('--labels', type=int, default=2)
    p.add_argument('--topk', type=int, default=10)
    p.add_argument('--radius', type=float, default=12)
    p.add_argument('--repeats', type=int, default=2)
    p.add_argument('--ort-arena', choices=('on', 'off'), default='on',
                   help="onnx-decomposed: ONNX Runtime's CPU memory arena")
    p.add_argument('--out', help='also write the rows as JSON here')
    p.add_argument('--worker-impl', help=argparse.SUPPRESS)
    p.add_argument('--worker-channels', type=int, help=argparse.SUPPRESS)
    p.add_argument('--worker-out', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker_impl:
        return worker(args)

    device = torch.device(args.device)
    if 'native' in args.impl and not native_ops_available(device):
        sys.exit(f'no native kernel for {device}: build with '
                 '`python -m sfc_plugin.ops`')
    pairs = eligible_pairs(args)
    bw = bandwidth(device)
    rate = matmul_rate(device)
    name = (torch.cuda.get_device_name(device) if device.type == 'cuda' else
            f'CPU, {torch.get_num_threads()} threads')
    if device.type == 'cpu' and 'native-bf16' in args.impl:
        name += f', bf16 kernel: {cpu_bf16_kernel()}'
    if device.type == 'cuda' and 'native' in args.impl:
        name += (f'; native runs {cuda_kernel_config(torch.float32, device)}'
                 f', bf16 {cuda_kernel_config(torch.bfloat16, device)}')
    print(f'torch {torch.__version__}, {name}; {args.height}×{args.width}, '
          f'T={args.frames}, k={args.topk}, r\'={args.radius}, best of '
          f'{args.repeats}; {pairs / 1e6:.1f} M eligible pairs; fp32 '
          f'matmul {rate:.0f} GFLOP/s; copy bandwidth {bw:.0f} GB/s')
    if any('decomposed' in impl for impl in args.impl):
        size = (1, args.frames, args.height, args.width, 4)
        print('decomposed_bytes (what the dense forms are checked against): '
              + ', '.join(f'{runtime} '
                          f'{decomposed_bytes(*size, runtime) / 2**20:.0f} MiB'
                          for runtime in ('torch', 'onnxruntime')))
    mem = 'peak GPU MiB' if device.type == 'cuda' else 'peak RSS (MiB)'
    print(f'| C | implementation | s/frame | {mem} | extra over inputs | '
          'speed-up vs native | speed-up vs dense | eligible GFLOP/s | '
          '% of fp32 matmul | max abs diff vs first |')
    print('|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|')
    rows = []
    for c in args.channels:
        flops = 2 * c * pairs
        results, outs = {}, {}
        for impl in args.impl:
            out_path = f'/tmp/propagation_step_{impl}_{c}.pt'
            cmd = [sys.executable, __file__, *sys.argv[1:],
                   '--worker-impl', impl, '--worker-channels', str(c),
                   '--worker-out', out_path]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f'{impl} at C={c} failed:\n{proc.stderr}')
            results[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
            outs[impl] = torch.load(out_path, weights_only=True)
        first = outs[args.impl[0]]
        for impl in args.impl:
            r = results[impl]
            speedup = {
                base: (results[base]['seconds'] /
                       r['seconds'] if base in results else float('nan'))
                for base in ('native', 'dense')
            }
            gflops = flops / r['seconds'] / 1e9
            diff = (outs[impl] - first).abs().max().item()
            # Masks: the arg-max label, compared with the first impl's.
            agree = (outs[impl].argmax(0) == first.argmax(0)).float().mean()
            rows.append(dict(channels=c, impl=impl,
                             eligible_gflop=flops / 1e9,
                             floor_s=flops / rate / 1e9,
                             speedup_vs_native=speedup['native'],
                             mask_agreement=agree.item(), **r))
            print(f'| {c} | {impl} | {r["seconds"]:.4f} | '
                  f'{r["peak_mib"]:.0f} | {r["extra_mib"]:.1f} | '
                  f'{speedup["native"]:.2f}× | {speedup["dense"]:.1f}× | '
                  f'{gflops:.0f} | {100 * gflops / rate:.0f}% | {diff:.1e} |')
        # Floors: eligible FLOPs at the matmul rate; the float32 keys read
        # once.
        key_bytes = args.frames * c * args.height * args.width * 4
        print(f'| {c} | floor: FLOPs {flops / rate / 1e9:.4f} s, bytes '
              f'{key_bytes / bw / 1e9:.4f} s |  |  |  |  |  |  |  |  |')
    if args.out:
        write_json(dict(device=name, bandwidth_gbs=bw, matmul_gflops=rate,
                        rows=rows), args.out, indent=1)


if __name__ == '__main__':
    main()
