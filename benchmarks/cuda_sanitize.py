"""The CUDA matching kernel under compute-sanitizer, and profiled by ncu.

    python benchmarks/cuda_sanitize.py --out DIR               # every tool
    python benchmarks/cuda_sanitize.py --tools memcheck racecheck
    python benchmarks/cuda_sanitize.py --tools racecheck --configs op
    python benchmarks/cuda_sanitize.py --profile --out DIR     # and ncu

NVIDIA's compute-sanitizer runs this script again (``--cases``) under each
tool. The cases call every configuration the kernel is built in
(``torch.ops.sfc._topk_window_neighbours_config``), in each feature type it
is built for (not with ``--configs op``), and the op itself
(``torch.ops.sfc.topk_window_match``) in float64, float32, float16 and
bfloat16 with tensor cores allowed and not, on the op tests' edge cases
(odd sizes, T = 1, k beyond the window and beyond all keys, radius 0 and
beyond the frame, a channel tail, no eligible key, one row), on two batch
items, and on a frame with more channels than one slice. Tools:
``memcheck`` (out-of-bounds and misaligned accesses), ``racecheck``
(shared-memory hazards), ``synccheck`` (invalid barriers) and ``initcheck``
(reads of uninitialised device memory). The children run with
``PYTORCH_NO_CUDA_MEMORY_CACHING=1``: every tensor is an allocation of its
own, or an access past a tensor's end would land in the caching allocator's
pool and go unseen. A tool's verdict is its ``ERROR SUMMARY`` (racecheck's
``RACECHECK SUMMARY``, its warnings counted).

``--profile`` also runs Nsight Compute (``ncu --clock-control none``, the
clocks left as they are) on one launch of the op's kernel at the DAVIS
480p step (60×107, T = 21, k 15, r' 15, C = 1280): the float32 default
(3xTF32) and the bfloat16 default (tensor cores), with the sections that
say where its time goes (speed of light, warp stall reasons, scheduler,
memory workload, occupancy) and the instructions it executed (against
``benchmarks/cuda_kernel_sass.py``'s static count of its slice loop).

Each tool's output goes to ``DIR/<tool>.txt``, the verdicts to
``DIR/cuda_sanitize.json`` and a Markdown table on stdout. Exit status: 0
if every tool ran and found nothing, 1 if one found an error, 2 if one
could not run (no CUDA, no tool, a crash).
"""
import argparse
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
from typing import Dict, List, Optional

HERE = osp.dirname(osp.abspath(__file__))
REPO = osp.dirname(HERE)

TOOLS = ('memcheck', 'racecheck', 'synccheck', 'initcheck')
#: Kernel-name filter and sections of the ncu profile.
NCU_KERNEL = 'regex:topk_window_kernel'
NCU_SECTIONS = ('SpeedOfLight', 'WarpStateStats', 'SchedulerStats',
                'MemoryWorkloadAnalysis', 'Occupancy', 'LaunchStats',
                'InstructionStats')
#: (name, feature type) of the profiled launches.
PROFILES = (('float32', 'float32'), ('bfloat16', 'bfloat16'))
#: A run's closing count: memcheck, synccheck and initcheck print "ERROR
#: SUMMARY: 2 errors", racecheck "RACECHECK SUMMARY: 3 hazards displayed
#: (1 errors, 2 warnings)", whose warnings count too: the warp-level races
#: that 0dcfad8 removed were reported as warnings.
SUMMARY = re.compile(
    r'ERROR SUMMARY:\s*(\d+)\s+errors?'
    r'|RACECHECK SUMMARY:\s*\d+\s+hazards?\s+displayed\s*'
    r'\((\d+)\s+errors?,\s*(\d+)\s+warnings?\)')
#: A finding's first line ("========= Warning: Race reported between ...",
#: "========= Invalid __global__ read of size 4 ..."): what a run cut
#: before its summary had found by then.
FINDING = re.compile(r'^=+ (Error|Warning|Invalid|Program hit)\b',
                     re.MULTILINE)


def fileio():
    """sfc_plugin's file output (imported when first written, so that
    --help and argument errors need no more than the standard library)."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from sfc_plugin.utils import fileio as module
    return module


def find_program(name: str) -> Optional[str]:
    """A CUDA tool on PATH, or in the CUDA toolkit torch builds with."""
    found = shutil.which(name)
    if found:
        return found
    try:
        from torch.utils.cpp_extension import CUDA_HOME
    except Exception:  # a torch without the extension builder
        CUDA_HOME = None
    for root in filter(None, (os.environ.get('CUDA_HOME'), CUDA_HOME,
                              '/usr/local/cuda')):
        path = osp.join(root, 'bin', name)
        if osp.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def verdict(tool: str, returncode: int, output: str) -> dict:
    """What one compute-sanitizer run says: ``errors`` from its summary
    (:data:`SUMMARY`; the last one, where a child printed several; a run
    cut before it counts the findings it printed), ``status`` ok (none),
    ``errors`` (some) or ``failed`` (no summary and no finding, or the
    cases failed without the tool finding anything: a crash, a missing
    kernel).
    """
    counts = [int(errors) if errors else int(race_errors) + int(warnings)
              for errors, race_errors, warnings in SUMMARY.findall(output)]
    errors = counts[-1] if counts else (
        len(FINDING.findall(output)) or None)
    if errors:
        status = 'errors'
    elif errors == 0 and returncode == 0:
        status = 'ok'
    else:
        status = 'failed'
    return dict(tool=tool, status=status, errors=errors,
                exit_status=returncode, last_line=last_line(output))


def last_line(output: str) -> str:
    """A tool's last non-blank line, for the table."""
    tail = [line for line in output.splitlines() if line.strip()]
    return tail[-1][:300] if tail else '(no output)'


def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    env['PYTORCH_NO_CUDA_MEMORY_CACHING'] = '1'
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (REPO, env.get('PYTHONPATH')) if p)
    env['PYTHONUNBUFFERED'] = '1'
    return env


def run_logged(cmd: List[str], log: str, timeout: float) -> tuple:
    """Runs ``cmd`` (a tool over this script) for at most ``timeout``
    seconds and writes the command and its output to ``log``; returns
    (output, exit status), -1 for a run stopped at the limit, whose output
    is what it printed by then."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env=child_env(), timeout=timeout)
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        # What the child printed comes as bytes, whatever text= says.
        output = ''.join(
            part.decode(errors='replace') if isinstance(part, bytes) else
            part for part in (e.stdout or '', e.stderr or ''))
        output += f'\n(stopped after {timeout:.0f} s)'
        code = -1
    fileio().write_text(log, ' '.join(cmd) + '\n' + output)
    return output, code


def run_tool(sanitizer: str, tool: str, out: str, timeout: float,
             configs: str = 'all') -> dict:
    cmd = [sanitizer, '--tool', tool, '--error-exitcode', '3',
           '--print-limit', '50', sys.executable, osp.abspath(__file__),
           '--configs', configs, '--cases']
    log = osp.join(out, f'{tool}.txt')
    output, code = run_logged(cmd, log, timeout)
    result = verdict(tool, code, output)
    result['log'] = osp.basename(log)
    return result


def run_profile(ncu: str, name: str, dtype: str, out: str,
                timeout: float) -> dict:
    cmd = [ncu, '--clock-control', 'none', '--kernel-name', NCU_KERNEL,
           '--launch-skip', '1', '--launch-count', '1']
    for section in NCU_SECTIONS:
        cmd += ['--section', section]
    cmd += [sys.executable, osp.abspath(__file__), '--profile-case', dtype]
    log = osp.join(out, f'ncu_{name}.txt')
    output, code = run_logged(cmd, log, timeout)
    profiled = 'topk_window_kernel' in output and code == 0
    return dict(tool=f'ncu {name}', status='ok' if profiled else 'failed',
                errors=None, exit_status=code, log=osp.basename(log),
                last_line=last_line(output))


# --- run inside the tools ------------------------------------------------


def feature_types(config: str):
    """The feature types a kernel configuration is built for."""
    import torch
    if 'tensorcores' in config:
        return (torch.float16, torch.bfloat16)
    return (torch.float32, )


def run_cases(configs: str = 'all') -> None:
    """The op on the edge cases (see the module's docstring), and with
    ``configs`` 'all' every kernel configuration too; raises if the kernel
    is not there."""
    import torch
    from propagation_step import cuda_kernel_device
    sys.path.insert(0, REPO)
    from tests.test_ops.test_topk_window_match import CASES, random_inputs
    cuda_kernel_device('cuda_sanitize', 'cuda')
    cases = dict(CASES)
    # Two batch items; more channels than a 64-channel slice, with a tail.
    cases['batch-of-two'] = (3, 8, 5, 7, 2, 4, 2.0, 1)
    cases['channels-beyond-a-slice'] = (3, 150, 9, 13, 2, 15, 4.0, 1)
    configs = (list(torch.ops.sfc._topk_window_kernel_configs())
               if configs == 'all' else [])
    launches = 0
    for name, (t, c, h, w, k, topk, radius, free) in cases.items():
        batch = 2 if name == 'batch-of-two' else None
        query, keys, labels = random_inputs(sum(map(ord, name)), t, c, h, w,
                                            k, batch=batch)
        if batch is None:
            query, keys, labels = query[None], keys[None], labels[None]
        # The neighbours' slots are at most the keys (the match clamps).
        slots = min(topk, t * h * w)
        for config in configs:
            for dtype in feature_types(config):
                torch.ops.sfc._topk_window_neighbours_config(
                    query.to('cuda', dtype), keys.to('cuda', dtype), slots,
                    radius, 0.07, free, config)
                launches += 1
        for tensor_cores in ('0', '1'):
            os.environ['SFC_PLUGIN_TENSOR_CORES'] = tensor_cores
            for dtype in (torch.float64, torch.float32, torch.float16,
                          torch.bfloat16):
                torch.ops.sfc.topk_window_match(
                    *(x.to('cuda', dtype) for x in (query, keys, labels)),
                    topk, radius, 0.07, free)
                launches += 1
        torch.cuda.synchronize()
    print(f'cuda_sanitize: {launches} calls on {len(cases)} cases, '
          f'{len(configs)} configurations besides the op\'s')


def run_profile_case(dtype_name: str) -> None:
    """The op at the DAVIS 480p step twice (ncu skips the first)."""
    import torch
    from propagation_step import cuda_kernel_device, inputs
    device = cuda_kernel_device('cuda_sanitize', 'cuda')
    step = argparse.Namespace(height=60, width=107, frames=21, labels=1)
    query, keys, _ = inputs(step, 1280, device)
    dtype = getattr(torch, dtype_name)
    query, keys = query[None].to(dtype), keys[None].to(dtype)
    for _ in range(2):
        torch.ops.sfc.topk_window_neighbours(query, keys, 15, 15.0, 0.05, 1)
    torch.cuda.synchronize()


# --- the driver ----------------------------------------------------------


def table(results: List[dict]) -> str:
    lines = ['| tool | verdict | errors | exit status | log |',
             '|---|---|---:|---:|---|']
    for r in results:
        errors = '' if r['errors'] is None else r['errors']
        lines.append(f'| {r["tool"]} | {r["status"]} | {errors} | '
                     f'{r["exit_status"]} | {r["log"]} |')
    return '\n'.join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--tools', nargs='+', choices=TOOLS, default=list(TOOLS))
    p.add_argument('--profile', action='store_true',
                   help='also profile the kernel with ncu')
    p.add_argument('--out', default='cuda_sanitize',
                   help='folder for the logs and cuda_sanitize.json')
    p.add_argument('--timeout', type=float, default=300.0,
                   help='seconds for each tool\'s run')
    p.add_argument('--configs', choices=('all', 'op'), default='all',
                   help='the cases through every kernel configuration and '
                   'the op (all, the default), or through the op alone: '
                   'about half the calls, for a tool as slow as racecheck')
    p.add_argument('--cases', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--profile-case', choices=[d for _, d in PROFILES],
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.timeout > 0 or args.timeout == float('inf'):
        p.error(f'--timeout must be a positive number of seconds, got '
                f'{args.timeout}')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, HERE)
    if args.cases:
        run_cases(args.configs)
        return 0
    if args.profile_case:
        run_profile_case(args.profile_case)
        return 0
    sanitizer = find_program('compute-sanitizer')
    ncu = find_program('ncu') if args.profile else None
    if sanitizer is None:
        print('cuda_sanitize: compute-sanitizer not found (on PATH, '
              '$CUDA_HOME/bin or /usr/local/cuda/bin): it comes with the '
              'CUDA toolkit', file=sys.stderr)
        return 2
    if args.profile and ncu is None:
        print('cuda_sanitize: ncu (Nsight Compute) not found, which '
              '--profile needs', file=sys.stderr)
        return 2
    try:
        fileio().check_writable_dir(args.out, '--out')
    except OSError as e:
        print(f'cuda_sanitize: {e}', file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    results = []
    for tool in args.tools:
        print(f'cuda_sanitize: {tool} ...', flush=True)
        results.append(run_tool(sanitizer, tool, args.out, args.timeout,
                                args.configs))
        print(f'cuda_sanitize: {tool} {results[-1]["status"]}: '
              f'{results[-1]["last_line"]}', flush=True)
    if args.profile:
        for name, dtype in PROFILES:
            print(f'cuda_sanitize: ncu {name} ...', flush=True)
            results.append(run_profile(ncu, name, dtype, args.out,
                                       args.timeout))
    fileio().write_json(results, osp.join(args.out, 'cuda_sanitize.json'),
                        indent=1)
    print(table(results))
    if any(r['status'] == 'failed' for r in results):
        return 2
    return 1 if any(r['status'] == 'errors' for r in results) else 0


if __name__ == '__main__':
    sys.exit(main())
