"""One command for a GPU machine: build the kernels, check them, time it all.

    python benchmarks/gpu_wheelhouse.py               # here, with PyPI
    python benchmarks/gpu_check.py --out DIR          # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gc

Made for a machine that has torch with CUDA, numpy, opencv and nvcc but no
package registry: the project is imported from this checkout (no install),
and the pure-Python packages it needs (mmengine, mmcv-lite, addict, yapf,
pytest...) are installed, where missing, from the ``wheelhouse/`` folder
that ``gpu_wheelhouse.py`` fills, into a folder of their own
(``wheelhouse/site-pyXY``), never into the system's site-packages.

Sections, in this order:

- ``env``: the project importable (installing what is missing), the
  machine: GPU, torch, CUDA, cuDNN, Triton, nvcc;
- ``build``: ``python -m sfc_plugin.ops``, the native kernels built (CUDA
  too on a GPU) and loaded;
- ``correctness``: the op's parametrised tests on the device (pytest on
  ``tests/test_ops``, ``-k cuda``; with them the CUDA tests that a
  tracking step never makes the host wait for the device,
  ``CORRECTNESS_TESTS``), and the native op in fp32, fp16 and
  bf16, each on CUDA cores and on tensor cores (fp32 in 3xTF32), on the
  same cases
  (borders, ties, k beyond the window, T = 1, odd sizes) against the
  float64 brute-force definition of those tests, evaluated on the inputs
  rounded to each type;
- ``op_speed``: ``benchmarks/propagation_step.py`` at 480p (60×107, T = 21)
  for C = 256 and 1280 in the SFC (k 15, r' 15) and FC (k 10, r' 12) DAVIS
  settings: native kernel vs the dense form, and against the floor (the
  eligible FLOPs at cuBLAS's fp32 rate; TF32 and bf16 rates shown too);
- ``kernel_configs``: ``benchmarks/cuda_kernel_configs.py`` in both
  settings: every configuration the CUDA kernel is built in (tile, chunk,
  micro-tile, prefetch; tensor cores for bf16, 3xTF32 for fp32) timed
  against the CUDA-core default on the same inputs, the CUDA-core ones
  checked to return exactly its neighbours, the tensor-core ones nearly
  (≥ 99% of indices); and ``benchmarks/cuda_frame_groups.py``: the op
  with the launch plan's frame groups against other counts, of whole
  frames or of every frame's key chunks (float32 and bfloat16), each
  checked to return the plan's neighbours;
- ``train``: the FC training step (``benchmarks/train_speed.py``) at batch
  96 with AMP (bf16), in iterations/s; beside it the other mixed-precision
  variants (bf16 autocast without GradScaler, fused Adam), the FLOPs of a
  step and the rate they imply, and the kernels that take the GPU's time;
- ``track``: ``tools/track.py`` end to end at 480p (the shared DAVIS-2016
  blackswan looped, or a generated video) for ``fc_davis.py`` and
  ``sfc_davis.py``, with and without the overlay video, in frames/s; and
  without it at each reduced precision of the torch path (bf16, and fp16
  on CUDA; on CUDA SFC fp32 and bf16 once more with their matching on
  CUDA cores, ``SFC_PLUGIN_TENSOR_CORES=0``, instead of the default
  tensor cores, and SFC bf16 without cuDNN's algorithm search, which the
  first frame pays for), with the share of mask pixels equal to the fp32
  run's,
  the rate after the first frame (where the one-time costs fall) and
  the matching kernel; on CUDA first each config's encoder alone as the
  tracker runs it, the part of a frame that is not the match; then the
  tracking loop alone
  (``benchmarks/tracking_overlap.py``, SFC bf16) with 0 and 1 frames in
  flight, what overlapping the host's work with the device's gives;
- ``sanitize``: ``benchmarks/cuda_sanitize.py``: the CUDA kernel under
  compute-sanitizer's memcheck, racecheck and synccheck (every
  configuration, and the op, on the op tests' edge cases), each tool's
  ERROR SUMMARY its verdict, and Nsight Compute's profile of the op's
  float32 and bfloat16 kernels at the 480p step (logs/sanitize).

Each section runs in a child process of its own: the CUDA kernel has
never run before, and a crash or a broken CUDA context must not take the
other sections with it. A failure is recorded with its error and the other
sections still run; the exit status is 1 if any section failed. Results go
to ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` (rewritten after each
section, so a run cut short keeps what it measured; a section saves its
figures as they come, so one killed at its timeout keeps them too), the
sections' logs to ``DIR/logs``; the table is printed at the end.
``--time-limit`` bounds the whole run (a device call's limit): a section
gets at most what is left, and is skipped when too little is; ``build``
runs before any section that uses the kernels. ``--quick`` shrinks every
size for a smoke run; on CPU (``--device cpu``) what needs CUDA (fp16/bf16
kernels, TF32/bf16 rates, AMP) says ``skipped: no CUDA``.
"""
import argparse
import contextlib
import datetime
import importlib.util
import json
import math
import os
import os.path as osp
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional

HERE = osp.dirname(osp.abspath(__file__))
REPO = osp.dirname(HERE)
sys.path.insert(0, HERE)  # the other benchmarks, reused below

from gpu_wheelhouse import DEFAULT_DEST as DEFAULT_WHEELHOUSE  # noqa: E402
from gpu_wheelhouse import REQUIREMENTS  # noqa: E402

SECTIONS = ('env', 'build', 'correctness', 'op_speed', 'kernel_configs',
            'train', 'track', 'sanitize')
NO_CUDA = 'skipped: no CUDA'

#: The issue's goals on an H100 (figure key -> (text, test)).
GOALS = {
    'match_vs_floor': ('≤ 2× the fp32 floor', lambda v: v <= 2),
    'train_its': ('≥ 5 it/s', lambda v: v >= 5),
    'sfc_fps_no_overlay': ('≥ 100 frames/s', lambda v: v >= 100),
}


@contextlib.contextmanager
def environment(**variables: str) -> Iterator[None]:
    """Within it, these environment variables have these values (the op
    reads ``SFC_PLUGIN_TENSOR_CORES`` at every call); the previous ones,
    or their absence, come back after."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# --------------------------------------------------------------------------
# Results


def row(figure: str, value=None, unit: str = '', note: str = '',
        goal: Optional[str] = None) -> dict:
    """One line of the table. ``value`` None means not measured (``note``
    says why); ``goal`` names an entry of :data:`GOALS`."""
    return dict(figure=figure, value=value, unit=unit, note=note, goal=goal)


def write_whole(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file renamed into
    place, so that a run stopped mid-write leaves the last whole file. (As
    ``sfc_plugin.utils.fileio.write_text`` does; this process runs before
    the wheelhouse's packages are installed, and ``sfc_plugin`` needs
    mmengine to import.)"""
    with open(path + '.tmp', 'w') as f:
        f.write(text)
    os.replace(path + '.tmp', path)


def save_progress(args, rows: list, details: dict) -> None:
    """Saves what a section has measured so far beside its result file
    (``RESULT.partial``), so that a section killed at its timeout still
    reports it (:func:`run_section`). A no-op outside a section's child."""
    if getattr(args, 'result', None):
        write_whole(args.result + '.partial',
                    json.dumps(dict(rows=rows, details=details),
                               default=str))


def judge(r: dict, quick: bool, device: str) -> str:
    """The verdict on a row with a goal: the goals are full-size GPU
    figures, so a quick or CPU run is not judged."""
    if not r.get('goal') or r['value'] is None:
        return ''
    if quick or device == 'cpu':
        return 'not judged (quick / CPU run)'
    text, test = GOALS[r['goal']]
    return 'met' if test(r['value']) else 'NOT met'


def kernel_label(name: str, width: int = 70) -> str:
    """A profiled kernel's name, short enough for a table: without the
    return type and the namespaces that say nothing there."""
    for noise in ('void ', 'sfc_plugin::ops::cuda_kernels::',
                  'at::native::', '(anonymous namespace)::'):
        name = name.replace(noise, '')
    return name[:width]


def profile_rows(profile: dict, what: str, unit: str, top: int) -> list:
    """Rows of a ``device_profile`` result: the wall time per ``unit``
    with the GPU's busy time and the host's operators, then the ``top``
    busiest kernels and the ``top`` host operators by the host's time."""
    busy = profile['busy_ms']
    rows = [row(f'{what}: time per {unit}', profile['wall_ms'], 'ms',
                note=(f'GPU busy {busy:.2f} ms, ' if busy is not None else
                      '') + f'{profile["host_ops"]:.0f} host operators '
                f'taking {profile["host_op_ms"]:.2f} ms of the host '
                '(torch.profiler)')]
    for name, ms, launches, share in profile['kernels'][:top]:
        rows.append(row(f'kernel {kernel_label(name)}', ms, f'ms/{unit}',
                        note=f'{100 * share:.1f}% of busy, '
                        f'{launches:.1f} launches'))
    for name, ms, calls in profile['host_op_table'][:top]:
        rows.append(row(f'host {name}', ms, f'ms/{unit}',
                        note=f'{calls:.1f} calls'))
    return rows


def fmt(value) -> str:
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e5:
            return f'{value:.3g}' if abs(value) < 100 else f'{value:.0f}'
        return f'{value:.2e}'
    return str(value)


def cell(text: str) -> str:
    """Text safe in a table cell: error messages may hold pipes."""
    return text.replace('|', '\\|').replace('\n', ' ')


def markdown(report: dict) -> str:
    env = report['machine']
    lines = [
        f'# GPU check, {report["date"]}', '',
        f'`{report["command"]}`', '',
        f'- device: {env.get("device_name", report["device"])}',
        f'- torch {env.get("torch", "?")}, CUDA {env.get("cuda", "-")}, '
        f'cuDNN {env.get("cudnn", "-")}, Triton {env.get("triton", "-")}, '
        f'nvcc {env.get("nvcc", "-")}, Python {env.get("python", "?")}',
        f'- host: {env.get("host", "?")}; '
        f'{"quick (smoke) sizes" if report["quick"] else "full sizes"}', '',
        '| section | figure | value | unit | goal | verdict / note |',
        '|---|---|---:|---|---|---|'
    ]
    for name, sec in report['sections'].items():
        head = f'**{sec["status"]}** ({sec.get("seconds", 0):.0f} s)'
        if sec.get('error'):
            head += ': ' + cell(sec['error'].splitlines()[0][:300])
        lines.append(f'| {name} | *section* | | | | {head} |')
        for r in sec.get('rows', []):
            goal = GOALS[r['goal']][0] if r.get('goal') else ''
            value = '' if r['value'] is None else fmt(r['value'])
            verdict = judge(r, report['quick'], report['device'])
            note = '; '.join(x for x in (verdict, r.get('note', '')) if x)
            lines.append(f'| {name} | {r["figure"]} | {cell(value)} | '
                         f'{r.get("unit", "")} | {goal} | {cell(note)} |')
    failed = [n for n, s in report['sections'].items()
              if s['status'] == 'failed']
    lines += ['', 'Failed sections: ' + (', '.join(failed) or 'none') + '.']
    return '\n'.join(lines) + '\n'


def write_report(report: dict, out: str) -> str:
    """Writes ``gpu_check.json`` and ``gpu_check.md`` in ``out``, each
    replaced whole (a run stopped while writing keeps the last report),
    and returns the Markdown."""
    text = markdown(report)
    write_whole(osp.join(out, 'gpu_check.json'),
                json.dumps(report, indent=1))
    write_whole(osp.join(out, 'gpu_check.md'), text)
    return text


# --------------------------------------------------------------------------
# Environment: what the children import, from where


def site_folder(wheelhouse: str) -> str:
    """Where the wheelhouse's packages are installed, per Python version:
    never the system's site-packages."""
    return osp.join(wheelhouse, f'site-py{sys.version_info[0]}'
                    f'{sys.version_info[1]}')


def child_env(site: str) -> Dict[str, str]:
    """The environment of every child: this checkout and the wheelhouse's
    packages importable, their programs (ninja) on PATH."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (REPO, site, env.get('PYTHONPATH')) if p)
    env['PATH'] = os.pathsep.join(
        p for p in (osp.join(site, 'bin'), env.get('PATH')) if p)
    env['PYTHONUNBUFFERED'] = '1'
    return env


def missing_requirements(env: Dict[str, str]) -> List[str]:
    """Pins of :data:`REQUIREMENTS` whose module or program ``env`` lacks."""
    saved = sys.path[:]
    sys.path[:0] = env['PYTHONPATH'].split(os.pathsep)
    try:
        importlib.invalidate_caches()
        missing = []
        for pin, probe in REQUIREMENTS:
            if probe.startswith('program:'):
                found = shutil.which(probe.split(':', 1)[1],
                                     path=env['PATH'])
            else:
                found = importlib.util.find_spec(probe)
            if not found:
                missing.append(pin)
        return missing
    finally:
        sys.path[:] = saved


def install_missing(missing: List[str], wheelhouse: str, site: str,
                    env: Dict[str, str], log) -> None:
    """Installs the ``missing`` pins from ``wheelhouse`` into ``site``."""
    if not missing:
        return
    wheels = (os.listdir(wheelhouse) if osp.isdir(wheelhouse) else [])
    if not any(n.endswith('.whl') for n in wheels):
        names = ', '.join(pin.split('==')[0] for pin in missing)
        raise RuntimeError(
            f'no wheels in {wheelhouse} to install the {len(missing)} '
            'missing packages from: run `python '
            'benchmarks/gpu_wheelhouse.py` where PyPI is reachable and '
            f'carry wheelhouse/ along (missing: {names})')
    cmd = [
        sys.executable, '-m', 'pip', 'install', '--no-index',
        '--find-links', wheelhouse, '--no-deps', '--upgrade',
        '--disable-pip-version-check', '--target', site
    ] + missing
    log.write('$ ' + ' '.join(cmd) + '\n')
    log.flush()
    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f'pip install from {wheelhouse} failed (exit '
                           f'status {proc.returncode}); see {log.name}')
    still = missing_requirements(env)
    if still:
        raise RuntimeError(f'still missing after the install: '
                           f'{", ".join(still)}')


# --------------------------------------------------------------------------
# Sections. Each runs in its own child (``--section NAME``) and returns
# ``dict(rows=[...], details={...})``; raising fails it (a SectionFailure
# keeps what it measured before failing). Those of NEEDS_DEVICE are skipped
# where the device asked for is missing.


def device_ok(args) -> Optional[str]:
    """Why the requested device cannot be used, or None."""
    import torch
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        return (f'no CUDA: torch {torch.__version__} sees no GPU '
                '(torch.cuda.is_available() is False)')
    return None


def section_env(args) -> dict:
    """The machine, and the project importable with its registries."""
    import torch
    info = dict(python=platform.python_version(), torch=torch.__version__,
                cuda=torch.version.cuda or '-',
                host=f'{platform.node()}, {os.cpu_count()} CPUs')
    if torch.backends.cudnn.is_available():
        info['cudnn'] = str(torch.backends.cudnn.version())
    try:
        import triton
        info['triton'] = triton.__version__
    except ImportError:
        info['triton'] = 'absent'
    nvcc = shutil.which('nvcc')
    if nvcc:
        out = subprocess.run([nvcc, '--version'], capture_output=True,
                             text=True).stdout
        match = re.search(r'release (\S+),', out)
        info['nvcc'] = match.group(1) if match else 'present'
    if torch.cuda.is_available():
        dev = torch.device(args.device)
        cap = torch.cuda.get_device_capability(dev)
        info['device_name'] = (f'{torch.cuda.get_device_name(dev)} '
                               f'(sm_{cap[0]}{cap[1]})')
    else:
        info['device_name'] = f'CPU ({platform.machine()})'
    import mmcv
    import mmengine

    import sfc_plugin.apis  # noqa: F401  (what tools/track.py imports)
    from sfc_plugin.utils import register_all_modules
    register_all_modules()
    rows = [
        row('project importable', 'yes',
            note=f'mmengine {mmengine.__version__}, mmcv '
            f'{mmcv.__version__}'),
        row('device', info['device_name']),
    ]
    why = device_ok(args)
    if why:
        raise SectionFailure(f'--device {args.device} asked for, but {why}',
                             rows, info)
    return dict(rows=rows, details=info)


def section_build(args) -> dict:
    """``python -m sfc_plugin.ops``: builds (or loads the cached build)."""
    import torch
    start = time.monotonic()
    proc = subprocess.run([sys.executable, '-m', 'sfc_plugin.ops'],
                          capture_output=True, text=True, cwd=REPO)
    seconds = time.monotonic() - start
    print(proc.stdout + proc.stderr)
    # The status line; a crash before it leaves its error on stderr.
    status = ((proc.stdout.strip() or proc.stderr.strip()).splitlines()
              or ['(no output)'])[-1]
    if proc.returncode:
        raise RuntimeError(f'build failed: {status}; its whole output '
                           'is in logs/build.log')
    device = torch.device(args.device).type
    if device not in status:
        raise RuntimeError(f'no {device} kernel: {status}')
    return dict(rows=[
        row('native kernels', status.replace('native kernels ', '')),
        row('build (or cached load) time', seconds, 's'),
    ], details=dict(status=status))


#: Tolerances of the native op against the definition, per feature type:
#: fp32 as in the tests; fp16/bf16 affinities and labels are rounded to
#: the type (the weights are float32), so a few units of its last place.
DTYPE_TOLERANCES = {'float32': 2e-5, 'float16': 2e-3, 'bfloat16': 1.6e-2}


def pytest_counts(output: str) -> Dict[str, int]:
    """Counts of pytest's closing line ('3 passed, 1 skipped in 2.0s')."""
    lines = [ln for ln in output.splitlines() if re.search(r' in [\d.]+s', ln)]
    counts = {}
    for n, what in re.findall(r'(\d+) (\w+)', lines[-1] if lines else ''):
        counts[what if what != 'error' else 'errors'] = int(n)
    return counts


def compare_dtype(impl: Callable, dtype, cases: dict, brute_force,
                  random_inputs) -> dict:
    """The native op on every case (and the ties case of the tests) with
    inputs rounded to ``dtype``, against the definition on the same
    rounded inputs; counts and the largest error."""
    checks = {
        name: (sum(map(ord, name)), spec, 0.07)
        for name, spec in cases.items()
    }
    # test_ties_with_equal_labels: duplicated key frames and labels.
    checks['ties'] = (7, (4, 5, 7, 4, 3, 10, 1.5, 2), 0.1)
    tol = DTYPE_TOLERANCES[str(dtype).split('.')[-1]]
    passed, failures, worst = 0, [], 0.0
    for name, (seed, spec, temperature) in checks.items():
        t, c, h, w, k, topk, radius, free = spec
        query, keys, labels = random_inputs(seed, t, c, h, w, k)
        if name == 'ties':
            keys[1], labels[1] = keys[0], labels[0]
            keys[3], labels[3] = keys[2], labels[2]
        query, keys, labels = (x.to(dtype).double()
                               for x in (query, keys, labels))
        try:
            expected = brute_force(query, keys, labels, topk, radius,
                                   temperature, free)
            got = impl(query, keys, labels, topk=topk, radius=radius,
                       temperature=temperature, unrestricted_keys=free)
            err = (got.double() - expected).abs().max().item()
        except Exception as e:  # a kernel error is a failed case
            failures.append(f'{name}: {type(e).__name__}: {e}'[:300])
            continue
        worst = max(worst, err)
        if err <= tol and got.shape == expected.shape:
            passed += 1
        else:
            failures.append(f'{name}: max abs error {err:.2e} > {tol:.0e}')
    return dict(passed=passed, total=len(checks), max_error=worst,
                tolerance=tol, failures=failures)


#: What the correctness section's pytest runs (with ``-k``).
CORRECTNESS_TESTS = ('tests/test_ops', 'tests/test_utils/test_host_copy.py',
                     'tests/test_models/test_sfc_tracker.py',
                     'tests/test_models/test_conv_relu_fusion.py',
                     'tests/test_models/test_cuda_graph.py')


def section_correctness(args) -> dict:
    """The op's own tests on the device, then fp32/fp16/bf16 against the
    definition, reusing the tests' cases, inputs and brute force."""
    import torch
    sys.path.insert(0, REPO)
    from tests.test_ops.test_topk_window_match import (
        CASES,
        brute_force,
        native_impl,
        random_inputs,
    )
    cuda = torch.device(args.device).type == 'cuda'
    # The CUDA parametrisations of the op's tests; the compile-only test
    # and the CPU emulation of the CUDA kernels match 'cuda' too, and are
    # CI's business. On CPU the C++ kernel's.
    select = ('cuda and not compile and not emulat' if cuda else
              'cpu-kernel')
    cmd = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider'
           ] + [osp.join(REPO, path) for path in CORRECTNESS_TESTS
                ] + ['-k', select]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    print(proc.stdout[-20000:] + proc.stderr[-5000:])
    counts = pytest_counts(proc.stdout)
    rows = [
        row(f'pytest {" ".join(CORRECTNESS_TESTS)} -k "{select}"',
            ', '.join(f'{n} {w}' for w, n in counts.items()) or 'no result',
            note='' if proc.returncode == 0 else
            f'exit status {proc.returncode}')
    ]
    details = dict(pytest=dict(command=' '.join(cmd), counts=counts,
                               exit_status=proc.returncode))
    # On a GPU a skipped CUDA test means the kernel was not reached.
    failed = (proc.returncode != 0 or not counts.get('passed')
              or (cuda and counts.get('skipped', 0) > 0))
    # Each type twice on CUDA: on CUDA cores, then on tensor cores
    # (SFC_PLUGIN_TENSOR_CORES 0 and 1, read by the op at every call;
    # float32 in 3xTF32).
    runs = [(torch.float32, False), (torch.float16, False),
            (torch.bfloat16, False), (torch.float32, True),
            (torch.float16, True), (torch.bfloat16, True)]
    for dtype, tensor_cores in runs:
        name = str(dtype).split('.')[-1] + (' tensor cores' if tensor_cores
                                            else '')
        if not cuda and (tensor_cores or dtype != torch.float32):
            rows.append(row(f'native op {name} vs definition',
                            note=NO_CUDA))
            continue
        with environment(
                SFC_PLUGIN_TENSOR_CORES='1' if tensor_cores else '0'):
            result = compare_dtype(native_impl(args.device, dtype), dtype,
                                   CASES, brute_force, random_inputs)
        details[name] = result
        failed |= result['passed'] != result['total']
        rows.append(row(
            f'native op {name} vs definition: cases passed',
            f'{result["passed"]}/{result["total"]}',
            note=f'max abs error {result["max_error"]:.1e} (tolerance '
            f'{result["tolerance"]:.0e})' +
            ''.join(f'; {f}' for f in result['failures'][:3])))
    if failed:
        raise SectionFailure('the op disagrees with its definition or its '
                             'tests failed', rows, details)
    return dict(rows=rows, details=details)


def matmul_rates(device, quick: bool) -> Dict[str, Optional[float]]:
    """GFLOP/s of a square matmul in fp32 (TF32 off), TF32 and bf16, best
    of 5, timed by CUDA events (wall clock on CPU). The fp32 rate is the
    floor's: the kernel accumulates in fp32 on CUDA cores."""
    import torch
    n = 1024 if quick else 8192
    cuda = device.type == 'cuda'
    modes = {'fp32': (torch.float32, False), 'tf32': (torch.float32, True),
             'bf16': (torch.bfloat16, False)}
    rates = {}
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, (dtype, tf32) in modes.items():
            if not cuda and name != 'fp32':
                rates[name] = None
                continue
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            a @ b
            best = math.inf
            for _ in range(5):
                if cuda:
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    start.record()
                    a @ b
                    end.record()
                    end.synchronize()
                    best = min(best, start.elapsed_time(end) / 1e3)
                else:
                    t0 = time.perf_counter()
                    a @ b
                    best = min(best, time.perf_counter() - t0)
            rates[name] = 2 * n**3 / best / 1e9
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return rates


#: (label, top-k, r'): the DAVIS settings of the fused SFC and single FC
#: models (ENGINEERING.md, settings table).
MATCH_SETTINGS = (('SFC k15 r15', 15, 15.0), ('FC k10 r12', 10, 12.0))


def run_json_script(script: str, script_args: List[str], label: str,
                    rows: list, errors: list,
                    env: Optional[Dict[str, str]] = None):
    """Runs ``benchmarks/SCRIPT ... --out FILE`` (with ``env`` added to the
    environment) and prints its output; returns (its JSON rows file, its
    exit status), or (None, status) with a failed row and error for
    ``label`` when it wrote no file."""
    with tempfile.TemporaryDirectory() as tmp:
        out = osp.join(tmp, 'rows.json')
        cmd = [sys.executable, osp.join(HERE, script), *script_args,
               '--out', out]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                              env=dict(os.environ, **(env or {})))
        print(f'$ {" ".join(cmd)}\n{proc.stdout}{proc.stderr}')
        if not osp.exists(out):
            errors.append(f'{label}: ' + (proc.stderr.strip().splitlines()
                                          or ['?'])[-1])
            rows.append(row(label, note='failed: see the log'))
            return None, proc.returncode
        with open(out) as f:
            return json.load(f), proc.returncode


def section_op_speed(args) -> dict:
    """``propagation_step.py`` per setting (each implementation in a
    process of its own), set against this run's matmul rates."""
    import torch
    device = torch.device(args.device)
    cuda = device.type == 'cuda'
    rates = matmul_rates(device, args.quick)
    rows = [
        row(f'matmul {name} rate', rate and rate / 1e3, 'TFLOP/s',
            note='' if rate else NO_CUDA)
        for name, rate in rates.items()
    ]
    size = (['--height', '12', '--width', '20', '--frames', '3',
             '--channels', '16', '32', '--repeats', '1'] if args.quick else
            ['--height', '60', '--width', '107', '--frames', '21',
             '--channels', '256', '1280', '--repeats', '10'])
    impls = ['native', 'dense'] + (['native-bf16'] if cuda else [])
    details = dict(matmul_gflops=rates, runs={})
    errors = []
    for label, topk, radius in MATCH_SETTINGS:
        run, code = run_json_script(
            'propagation_step.py',
            ['--device', args.device, '--impl', *impls, '--topk', str(topk),
             '--radius', str(radius), *size], label, rows, errors)
        if run is None:
            continue
        if code:
            errors.append(f'{label}: exit status {code}')
            rows.append(row(f'{label}', note='failed: see the log'))
            continue
        details['runs'][label] = run
        by = {(r['channels'], r['impl']): r for r in run['rows']}
        for c in sorted({r['channels'] for r in run['rows']}):
            native, dense = by[(c, 'native')], by[(c, 'dense')]
            floor = native['eligible_gflop'] / rates['fp32']
            at = f'{label}, C={c}'
            rows += [
                row(f'{at}: native', 1e3 * native['seconds'], 'ms/frame'),
                row(f'{at}: dense', 1e3 * dense['seconds'], 'ms/frame',
                    note='dense / native = '
                    f'{dense["seconds"] / native["seconds"]:.1f}×'),
            ]
            if (c, 'native-bf16') in by:
                bf16 = by[(c, 'native-bf16')]
                rows.append(row(
                    f'{at}: native bf16', 1e3 * bf16['seconds'], 'ms/frame',
                    note=f'mask agreement with fp32 '
                    f'{100 * bf16["mask_agreement"]:.2f}%'))
            else:
                rows.append(row(f'{at}: native bf16', note=NO_CUDA))
            # The goal's figure; in a quick run C is smaller, so the
            # largest C stands in for it (shown, not judged).
            goal = ('match_vs_floor' if topk == MATCH_SETTINGS[0][1] and
                    c == max(r['channels'] for r in run['rows']) else None)
            floors = ', '.join(
                f'{name} {native["eligible_gflop"] / rate * 1e3:.2f} ms'
                for name, rate in rates.items() if rate)
            rows.append(row(f'{at}: native / fp32 floor',
                            native['seconds'] / floor, '×', goal=goal,
                            note=f'floors: {floors}'))
        save_progress(args, rows, details)
    if errors:
        raise SectionFailure('; '.join(errors), rows, details)
    return dict(rows=rows, details=details)


def fastest_rows(label: str, topk: int, runs: List[dict]) -> list:
    """Per C and feature type, the fastest configuration that passed its
    check; at the goal's setting and largest C, the float32 one is judged
    against the floor (the op's default can be switched to it)."""
    rows = []
    largest = max(r['channels'] for r in runs)
    for channels in sorted({r['channels'] for r in runs}):
        for features in ('float32', 'bfloat16'):
            passed = [r for r in runs if r['channels'] == channels
                      and r['features'] == features and r['ok']]
            if not passed:
                continue
            best = min(passed, key=lambda r: r['seconds'])
            goal = ('match_vs_floor' if features == 'float32'
                    and topk == MATCH_SETTINGS[0][1]
                    and channels == largest else None)
            rows.append(row(
                f'{label}, C={channels}, {features}: fastest '
                f'{best["config"]} / fp32 floor', best['vs_floor'], '×',
                goal=goal, note=f'{1e3 * best["seconds"]:.2f} ms/frame, '
                f'{best["speedup"]:.2f}× the CUDA-core default'))
    return rows


def section_kernel_configs(args) -> dict:
    """``cuda_kernel_configs.py`` per setting: each kernel configuration's
    time at C = 256 and 1280 (the largest C judged against the floor, as
    the op's default is in ``op_speed``)."""
    import torch
    if torch.device(args.device).type != 'cuda':
        return dict(rows=[row('kernel configurations', note=NO_CUDA)])
    size = (['--height', '12', '--width', '20', '--frames', '3',
             '--channels', '16', '32', '--repeats', '1'] if args.quick else
            ['--channels', '256', '1280', '--repeats', '10'])
    rows, details, errors = [], {}, []
    for label, topk, radius in MATCH_SETTINGS:
        run, code = run_json_script(
            'cuda_kernel_configs.py',
            ['--device', args.device, '--topk', str(topk), '--radius',
             str(radius), *size], label, rows, errors)
        if run is None:
            continue
        details[label] = run
        if code:
            errors.append(f'{label}: a configuration disagrees with the '
                          'CUDA-core default')
        rows += fastest_rows(label, topk, run['rows'])
        for r in run['rows']:
            rows.append(row(
                f'{label}, C={r["channels"]}: {r["config"]} '
                f'({r["features"]})', 1e3 * r['seconds'], 'ms/frame',
                note=f'{r["speedup"]:.2f}× the CUDA-core default, '
                f'{r["vs_floor"]:.1f}× the fp32 floor, '
                f'{r["computed_tflops"]:.1f} TFLOP/s computed; '
                f'{r["check"]}'))
        save_progress(args, rows, details)
        groups, code = run_json_script(
            'cuda_frame_groups.py',
            ['--device', args.device, '--topk', str(topk), '--radius',
             str(radius), *size], f'{label} frame groups', rows, errors)
        if groups is None:
            continue
        details[f'{label} frame groups'] = groups
        if code:
            errors.append(f'{label}: a frame group count changed the '
                          'neighbours')
        rows += frame_group_rows(label, groups['rows'])
        save_progress(args, rows, details)
    if errors:
        raise SectionFailure('; '.join(errors), rows, details)
    return dict(rows=rows, details=details)


def frame_group_rows(label: str, runs: List[dict]) -> list:
    """Per C and feature type, the launch plan's frame groups against the
    fastest group count, of frames or of chunks (``cuda_frame_groups.py``'s
    rows; a row without ``by`` is of frames)."""

    def name(r):  # '3', 'plan'; 'chunks 3', 'chunks plan'
        by = r.get('by', 'frames')
        return r['groups'] if by == 'frames' else f'{by} {r["groups"]}'

    rows = []
    for channels in sorted({r['channels'] for r in runs}):
        for features in ('float32', 'bfloat16'):
            runs_here = [r for r in runs if r['channels'] == channels
                         and r['features'] == features]
            plan = [r for r in runs_here if name(r) == 'plan']
            if not plan:
                continue
            best = min(runs_here, key=lambda r: r['seconds'])
            rows.append(row(
                f'{label}, C={channels}, {features}: frame groups as planned',
                1e3 * plan[0]['seconds'], 'ms/frame',
                note=f'fastest: {name(best)} groups, '
                f'{1e3 * best["seconds"]:.2f} ms = {best["speedup"]:.2f}× '
                'the plan; ' + ', '.join(
                    f'{name(r)}: {r["speedup"]:.2f}×' for r in runs_here
                    if name(r) != 'plan')))
    return rows


#: compute-sanitizer's tools that ``sanitize`` runs (initcheck also flags
#: the reads of torch's own kernels, so it is left to ``cuda_sanitize.py``).
SANITIZER_TOOLS = ('memcheck', 'racecheck', 'synccheck')


def section_sanitize(args) -> dict:
    """``cuda_sanitize.py``: the CUDA kernel under compute-sanitizer
    (every configuration and the op on the op tests' edge cases), and its
    ncu profile at the 480p step; logs under ``logs/sanitize``. Each tool
    gets a fifth of the section's time (racecheck, the slowest, took over
    45 s on an H200)."""
    import torch
    if torch.device(args.device).type != 'cuda':
        return dict(rows=[row('compute-sanitizer', note=NO_CUDA)])
    folder = osp.join(args.out, 'logs', 'sanitize')
    timeout = max(60.0, args.section_timeout / 5)
    cmd = [sys.executable, osp.join(HERE, 'cuda_sanitize.py'), '--tools',
           *SANITIZER_TOOLS, '--profile', '--timeout', f'{timeout:.0f}',
           '--out', folder]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    print(f'$ {" ".join(cmd)}\n{proc.stdout}{proc.stderr}')
    verdicts = osp.join(folder, 'cuda_sanitize.json')
    if not osp.exists(verdicts):
        raise SectionFailure(
            (proc.stderr.strip().splitlines() or ['no verdicts'])[-1],
            [row('compute-sanitizer', note='failed: see the log')], {})
    with open(verdicts) as f:
        results = json.load(f)
    rows = [
        row(r['tool'], r['status'],
            note=('' if r['errors'] is None else f'{r["errors"]} errors; ') +
            f'log logs/sanitize/{r["log"]}: {r["last_line"]}')
        for r in results
    ]
    bad = [r['tool'] for r in results if r['status'] != 'ok']
    if bad:
        raise SectionFailure(f'{", ".join(bad)}: not clean (see logs/'
                             'sanitize)', rows, dict(results=results))
    return dict(rows=rows, details=dict(results=results))


def section_train(args) -> dict:
    """``train_speed.bench`` on the training config's FC model; on CUDA
    also its other mixed-precision variants side by side, the FLOPs of a
    step and the kernels that take the GPU's time."""
    import torch
    from mmengine.config import Config
    from train_speed import VARIANTS, bench, profile_kernels, step_flops

    from sfc_plugin.utils import register_all_modules
    cuda = torch.device(args.device).type == 'cuda'
    register_all_modules()
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'fc_ytvos.py'))
    batch = 2 if args.quick else 96
    if cuda:
        torch.backends.cudnn.benchmark = True
    # mmengine's AmpOptimWrapper refuses to run without a GPU.
    opts = argparse.Namespace(device=args.device, amp=cuda,
                              channels_last=cuda,
                              crop=64 if args.quick else 256,
                              warmup=1 if args.quick else 5,
                              iters=2 if args.quick else 30)
    its, loss, peak = bench(cfg, batch, opts)
    if not math.isfinite(loss):
        raise RuntimeError(f'the training loss is {loss}')
    what = (f'batch {batch}, crop {opts.crop}, '
            f'{"AMP bf16, channels_last" if cuda else "fp32"}')
    rows = [
        row(f'FC train step ({what})', its, 'it/s',
            goal='train_its',
            note='' if cuda else 'AMP: ' + NO_CUDA),
        row('images/s', its * batch, 'images/s'),
    ]
    details = dict(loss=loss, batch=batch, **vars(opts))
    if cuda:
        rows.append(row('peak GPU memory', peak, 'GiB'))
    # Diagnostics: each may fail without taking the figures above along.
    for variant in (v for v in VARIANTS if cuda and v != 'amp'):
        try:
            v_its = bench(cfg, batch, opts, variant)[0]
            rows.append(row(f'variant {variant}', v_its, 'it/s',
                            note=f'{v_its / its:.2f}× AmpOptimWrapper'))
        except Exception as e:
            rows.append(row(f'variant {variant}', note=f'failed: {e}'))
    try:
        flops = step_flops(cfg, batch, opts)
        details['step_tflop'] = flops / 1e12
        rows += [row('training FLOPs per step', flops / 1e12, 'TFLOP',
                     note='torch.utils.flop_counter; forwards + backward'),
                 row('achieved rate', flops * its / 1e12, 'TFLOP/s')]
    except Exception as e:
        rows.append(row('training FLOPs per step', note=f'failed: {e}'))
    if cuda:
        try:
            prof = profile_kernels(cfg, batch, opts)
            details['profile'] = prof
            rows += profile_rows(prof, 'train step', 'step', 6)
        except Exception as e:
            rows.append(row('GPU profile', note=f'failed: {e}'))
    return dict(rows=rows, details=details)


def track_source(args, tmp: str):
    """(frame folder, first mask, description) of the track section's
    video (``track_video.tracking_source``)."""
    from track_video import tracking_source
    return tracking_source(4 if args.quick else args.track_frames, tmp,
                           quick=args.quick)


class TrackRun(NamedTuple):
    """One ``tools/track.py`` run of the track section."""
    config: str
    overlay: bool
    precision: str
    cuda_cores: bool  # SFC_PLUGIN_TENSOR_CORES=0
    cudnn_search: bool = True  # the config's env_cfg.cudnn_benchmark
    cuda_graphs: bool = False  # model.cuda_graphs
    cudnn_fusion: bool = False  # SFC_PLUGIN_CUDNN_FUSION=1


def track_runs(device: str) -> List[TrackRun]:
    """Each ``tools/track.py`` run, the goal's first (SFC without the
    overlay; fp32 first, the others' reference): fp32 with and without the
    overlay, then each reduced precision the device has without it (fp16
    needs CUDA); on CUDA, where the matching runs on tensor cores by
    default (sm_80+), SFC in fp32 and bf16 once more on CUDA cores
    (``SFC_PLUGIN_TENSOR_CORES=0``), to compare, SFC bf16 without
    cuDNN's algorithm search (``env_cfg.cudnn_benchmark=False``): on an
    H200 the first frame, which pays for the search, took 1.5-4 s, as long
    as 150-450 frames after it; and SFC bf16 with cuDNN's fused
    convolutions (``SFC_PLUGIN_CUDNN_FUSION=1``), then with those and its
    encoder as a CUDA graph (``model.cuda_graphs=True``), the host's
    operator calls saved."""
    cuda = device.startswith('cuda')
    precisions = ('fp32', 'bf16', 'fp16') if cuda else ('fp32', 'bf16')
    goal = [TrackRun('sfc_davis.py', False, precision, False)
            for precision in precisions]
    if cuda:
        goal += [TrackRun('sfc_davis.py', False, precision, True)
                 for precision in ('fp32', 'bf16')]
        goal.append(TrackRun('sfc_davis.py', False, 'bf16', False,
                             cudnn_search=False))
        goal.append(TrackRun('sfc_davis.py', False, 'bf16', False,
                             cudnn_fusion=True))
        goal.append(TrackRun('sfc_davis.py', False, 'bf16', False,
                             cuda_graphs=True, cudnn_fusion=True))
    return goal + [TrackRun('fc_davis.py', False, precision, False)
                   for precision in precisions] + [
                       TrackRun(config, True, 'fp32', False)
                       for config in ('sfc_davis.py', 'fc_davis.py')]


def encoder_rows(args, details: dict) -> list:
    """Each tracking config's encoder alone on one 480p frame as the
    tracker runs it (``SFCTracker.extract_feat``: fp32 eager; bf16 and
    fp16 from the folded channels-last copy; cuDNN's algorithm search on,
    as the configs' ``env_cfg.cudnn_benchmark``), timed by
    ``backbone_latency.best_time``: the share of a frame that is not the
    match. The note gives the first call too (the copy made, cuDNN's
    search). A reduced precision's adds the copy with each convolution,
    residual sum and ReLU fused (on CUDA with ``SFC_PLUGIN_CUDNN_FUSION=1``,
    not the default there until timed) and with them as separate ops, each
    timed the same way, and the convolutions cuDNN would not fuse."""
    import torch
    from backbone_latency import best_time
    from propagation_step import best_seconds

    from sfc_plugin.apis import init_tracker, tracker_config
    from sfc_plugin.apis.inference import cudnn_benchmark
    from sfc_plugin.models import ReducedPrecisionEncoder
    from sfc_plugin.models.encoders.conv_relu_fusion import (
        CUDNN_FUSION_ENV,
        FusedConvReLU2d,
    )
    device = torch.device(args.device)
    size = (96, 160) if args.quick else (480, 854)
    frame = torch.randn(3, *size, device=device)
    repeats = 3 if args.quick else 20

    def first_and_best(tracker, copies=None):
        """Seconds of the first call, and the best of ``repeats``, with
        ``copies`` making the reduced-precision copy (None: the
        tracker's own)."""
        if copies is not None:
            tracker._reduced_precision_encoder = copies
        with cudnn_benchmark(True):
            first = best_seconds(lambda: tracker.extract_feat(frame), device,
                                 1)
            return first, best_time(lambda x: tracker.extract_feat(x), frame,
                                    repeats, device)

    rows = []
    for config in ('fc_davis.py', 'sfc_davis.py'):
        for precision in ('fp32', 'bf16') + (
                ('fp16', ) if device.type == 'cuda' else ()):
            tracker = init_tracker(
                tracker_config(config, precision=precision), device)
            first, seconds = first_and_best(tracker)
            name = f'encoder {config} {precision}'
            details[name] = seconds
            note = f'{size[1]}×{size[0]}; first call {1e3 * first:.0f} ms'
            if precision != 'fp32':
                fusion = ReducedPrecisionEncoder()
                with environment(**{CUDNN_FUSION_ENV: '1'}):
                    fused_first, fused = first_and_best(tracker, fusion)
                modules = [m for m in fusion(tracker.encoder,
                                             tracker.PRECISIONS[precision])
                           .modules() if isinstance(m, FusedConvReLU2d)]
                refused = [m.cudnn_error for m in modules if m.cudnn_error]
                separate_first, separate = first_and_best(
                    tracker, ReducedPrecisionEncoder(fuse_relus=False))
                details[f'{name} fused'] = fused
                details[f'{name} separate ops'] = separate
                note += (f'; {len(modules)} convolutions fused with their '
                         f'ReLU ({len(refused)} left to separate ops'
                         + (f': {refused[0]}' if refused else '') +
                         f'): {1e3 * fused:.3g} ms (first call '
                         f'{1e3 * fused_first:.0f} ms), separate ops '
                         f'{1e3 * separate:.3g} ms (first call '
                         f'{1e3 * separate_first:.0f} ms): '
                         f'{separate / fused:.2f}× over separate ops')
            rows.append(row(f'{name} (as tracked)', 1e3 * seconds,
                            'ms/frame', note=note))
            del tracker
    return rows


def overlap_rows(args, details: dict, errors: list) -> list:
    """``benchmarks/tracking_overlap.py``: the tracking loop alone with 0
    and 1 frames in flight, side by side, for the goal's candidate (SFC,
    bf16; its matching on tensor cores on CUDA, the default); on CUDA then
    at 1 in flight with the encoder as a CUDA graph. Each run's profiled
    frame follows its rows."""
    cuda = args.device.startswith('cuda')
    rows = []
    fps_at_one = None
    for graphs in (False, True) if cuda else (False, ):
        label = 'sfc_davis.py bf16' + (' CUDA graphs' if graphs else '')
        script_args = ['--config', 'sfc_davis.py', '--precision', 'bf16',
                       '--device', args.device, '--in-flight'] + (
                           ['1', '--cuda-graphs'] if graphs else ['0', '1']
                       ) + ['--frames', '4' if args.quick else '100',
                            '--repeats', '1' if args.quick else '2',
                            '--profile'] + (['--quick'] if args.quick else [])
        # Both without cuDNN's fused convolutions: the graph alone.
        result, status = run_json_script(
            'tracking_overlap.py', script_args, f'loop {label}', rows,
            errors, env=dict(SFC_PLUGIN_TENSOR_CORES='1',
                             SFC_PLUGIN_CUDNN_FUSION='0'))
        if result is None:  # run_json_script said why
            continue
        if status:
            errors.append(f'loop {label}: exit status {status}')
        details['overlap' + (' cuda graphs' if graphs else '')] = result
        for r in result['rows']:
            n, fps = r['frames_in_flight'], r['frames_per_second']
            if graphs:
                note = ('' if fps_at_one is None else
                        f'{fps / fps_at_one:.2f}× over the eager encoder '
                        '(the run above, another process)')
            else:
                note = f'{r["speed_up"]:.2f}× over 0 in flight'
                fps_at_one = fps if n == 1 else fps_at_one
            rows.append(row(
                f'loop {label}, {n} frames in flight', fps, 'frames/s',
                note=f'matching {result["matching_kernel"]}; {note}' +
                ('' if r['same_predictions'] else '; predictions DIFFER')))
        if result.get('profile'):
            rows += profile_rows(result['profile'],
                                 f'loop {label} at 1 in flight', 'frame', 8)
    return rows


def track_row(args, tmp: str, frames: str, first: str, outs: dict,
              run: TrackRun, details: dict, errors: list) -> dict:
    """One ``tools/track.py`` run of :func:`track_runs` (``run``), in a
    folder of ``tmp``; its row from its own ``summary.json``, the masks of
    a reduced precision, of CUDA cores or without cuDNN's search compared
    with the fp32 run's (``outs``: the finished runs' folders)."""
    from track_video import agreement
    (config, overlay, precision, cuda_cores, cudnn_search, cuda_graphs,
     cudnn_fusion) = run
    label = ' '.join([config] + ([] if precision == 'fp32' else [precision])
                     + (['CUDA cores'] if cuda_cores else []) +
                     ([] if cudnn_search else ['no cuDNN search']) +
                     (['cuDNN fusion'] if cudnn_fusion else []) +
                     (['CUDA graphs'] if cuda_graphs else []) +
                     ['with' if overlay else 'without', 'overlay'])
    out = osp.join(tmp, '_'.join(map(str, run)))
    options = ([] if cudnn_search else ['env_cfg.cudnn_benchmark=False']) + (
        ['model.cuda_graphs=True'] if cuda_graphs else [])
    cmd = [sys.executable, osp.join(REPO, 'tools', 'track.py'), frames,
           first, '--out', out, '--config', config, '--device', args.device,
           '--precision', precision, '--quiet'] + (
               [] if overlay else ['--no-overlay']) + (
                   ['--cfg-options'] + options if options else [])
    # Explicit either way: the default (1) must not be whatever this
    # process was started with.
    env = dict(os.environ,
               SFC_PLUGIN_TENSOR_CORES='0' if cuda_cores else '1',
               SFC_PLUGIN_CUDNN_FUSION='1' if cudnn_fusion else '0')
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                          env=env)
    prefix = ('SFC_PLUGIN_TENSOR_CORES=0 ' if cuda_cores else '') + (
        'SFC_PLUGIN_CUDNN_FUSION=1 ' if cudnn_fusion else '')
    print(f'$ {prefix}{" ".join(cmd)}\n{proc.stdout}{proc.stderr}',
          flush=True)
    if proc.returncode:
        errors.append(f'{label}: ' + (proc.stderr.strip().splitlines()
                                      or ['?'])[-1])
        return row(label, note='failed: see the log')
    outs[run] = out
    with open(osp.join(out, 'summary.json')) as f:
        summary = json.load(f)
    details[label] = summary
    after_first = summary.get('frames_per_second_after_first')
    note = (f'{summary["frames"]} frames' + (
        f', {after_first:.1f} frames/s after the first frame\'s '
        f'{summary["first_frame_seconds"]:.2f} s' if after_first else '') +
            f', matching {summary["matching_kernel"]}, peak RSS '
            f'{summary["peak_rss_mib"]:.0f} MiB')
    reference = outs.get(TrackRun(config, False, 'fp32', False))
    if run != TrackRun(config, overlay, 'fp32', False) and reference:
        same = agreement(reference, out)
        details[label]['pixels_equal_to_fp32'] = same
        note += f', {100 * same:.3f}% of mask pixels = fp32'
    # Judged at every precision: the goal names none.
    goal = ('sfc_fps_no_overlay' if config == 'sfc_davis.py'
            and not overlay else None)
    return row(f'track.py {label}', summary['frames_per_second'],
               'frames/s', goal=goal, note=note)


def section_track(args) -> dict:
    """``tools/track.py`` per config, with and without the overlay, and at
    each reduced precision (its masks compared with fp32's); the figures
    are the runs' own ``summary.json``. After the goal's runs (SFC without
    the overlay) the loop alone with and without a frame in flight
    (:func:`overlap_rows`). Each figure is saved as it comes
    (:func:`save_progress`), so a section cut short keeps them."""
    rows, details, errors = [], {}, []
    if args.device.startswith('cuda'):
        try:
            rows += encoder_rows(args, details)
        except Exception as e:  # the runs below still count
            rows.append(row('encoders', note=f'failed: {e}'))
        save_progress(args, rows, details)
    with tempfile.TemporaryDirectory(prefix='gpu_check_track_') as tmp:
        frames, first, what = track_source(args, tmp)
        details['video'] = what
        rows.insert(0, row('video', what))
        outs = {}
        runs = track_runs(args.device)  # the goal's first
        goal_runs = sum(r[:2] == ('sfc_davis.py', False) for r in runs)
        for i, run in enumerate(runs, 1):
            rows.append(track_row(args, tmp, frames, first, outs, run,
                                  details, errors))
            save_progress(args, rows, details)
            if i == goal_runs:
                rows += overlap_rows(args, details, errors)
                save_progress(args, rows, details)
    if errors:
        raise SectionFailure('; '.join(errors), rows, details)
    return dict(rows=rows, details=details)


class Interrupted(Exception):
    """SIGTERM (``timeout``, a batch system) reached the parent."""


def _interrupted(signum, frame):
    raise Interrupted(f'interrupted by signal {signum}')


class SectionFailure(Exception):
    """A failed section that still has figures to report."""

    def __init__(self, message: str, rows: list, details: dict):
        super().__init__(message)
        self.rows, self.details = rows, details


RUNNERS = {
    'env': section_env,
    'build': section_build,
    'correctness': section_correctness,
    'op_speed': section_op_speed,
    'kernel_configs': section_kernel_configs,
    'train': section_train,
    'track': section_track,
    'sanitize': section_sanitize,
}
#: Sections that need the device the run asked for.
NEEDS_DEVICE = ('build', 'correctness', 'op_speed', 'kernel_configs', 'train',
                'track', 'sanitize')
#: Sections that run the native kernels, which ``build`` compiles first.
NEEDS_BUILD = ('correctness', 'op_speed', 'kernel_configs', 'track',
               'sanitize')
#: Seconds a section needs at the least; with less left it is skipped.
MIN_SECTION_SECONDS = 30


def ordered_sections(requested: List[str]) -> List[str]:
    """``env`` first, then ``build`` wherever a requested section runs the
    kernels (so that their first compilation, about a minute on a fresh
    machine, is not charged to a timed section), then the rest as asked."""
    rest = [s for s in requested if s not in ('env', 'build')]
    build = 'build' in requested or any(s in NEEDS_BUILD for s in rest)
    return ['env'] + (['build'] if build else []) + rest


def run_in_child(args) -> None:
    """``--section NAME``: runs it here and writes its result as JSON."""
    result = dict(status='ok')
    try:
        why = device_ok(args) if args.section in NEEDS_DEVICE else None
        if why:
            result.update(status='skipped', error=why)
        else:
            result.update(RUNNERS[args.section](args))
    except SectionFailure as e:
        result.update(status='failed', error=str(e), rows=e.rows,
                      details=e.details)
    except BaseException as e:  # recorded, not raised: the parent decides
        traceback.print_exc()
        result.update(status='failed', error=f'{type(e).__name__}: {e}')
    write_whole(args.result, json.dumps(result, indent=1, default=str))


def run_section(name: str, args, env: Dict[str, str], logs: str,
                timeout: float) -> dict:
    """Runs a section in a child for at most ``timeout`` seconds; a child
    that dies or hangs is a failed section with the end of its log and
    the figures it saved before (:func:`save_progress`). Interrupted
    (SIGTERM, ^C), it ends the child likewise and returns with
    ``interrupted`` set."""
    result_path = osp.join(logs, f'{name}.json')
    partial_path = result_path + '.partial'
    for path in (result_path, partial_path):
        if osp.exists(path):
            os.remove(path)
    cmd = [sys.executable, osp.abspath(__file__), '--section', name,
           '--result', result_path, '--device', args.device,
           '--track-frames', str(args.track_frames)] + (
               ['--quick'] if args.quick else [])
    log_path = osp.join(logs, f'{name}.log')
    start = time.monotonic()
    # The child's and its children's temporary files (a track video, their
    # outputs) go in a folder of its own, removed here when they are gone:
    # a killed child cannot remove them itself.
    scratch = tempfile.mkdtemp(prefix=f'gpu_check_{name}_')
    with open(log_path, 'w') as log, contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, scratch, ignore_errors=True)
        # A session of its own, so that a timeout also ends the section's
        # own children (pytest, track.py ...), which hold the GPU.
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                 env=dict(env, TMPDIR=scratch), cwd=REPO,
                                 start_new_session=True)
        interrupted = None
        try:
            code = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = f'killed after {timeout:.0f} s'
        except (Interrupted, KeyboardInterrupt) as e:
            interrupted = f'{e or "interrupted"}; its child was killed'
        finally:  # whatever stopped the wait, the child's session goes
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait()
    seconds = time.monotonic() - start
    result = None
    if not interrupted:
        try:
            with open(result_path) as f:
                result = json.load(f)
        except (OSError, ValueError):  # it died before writing one
            pass
    if result is None:
        with open(log_path, errors='replace') as f:
            tail = ''.join(f.readlines()[-5:]).strip() or '(empty log)'
        result = dict(status='failed', error=interrupted or (
            f'the child died ({code}): {tail}'))
        try:
            with open(partial_path) as f:
                result.update(json.load(f))
        except (OSError, ValueError):  # it died before its first figure
            pass
    if interrupted:
        result['interrupted'] = True
    result['seconds'] = seconds
    result['log'] = osp.relpath(log_path, osp.dirname(logs))
    return result


def parse_args():
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='\n'.join(__doc__.splitlines()[1:5]))
    p.add_argument('--out', help='results folder (created)')
    p.add_argument('--device', default='cuda',
                   help='cuda, cuda:1 ... or cpu (default: %(default)s)')
    p.add_argument('--quick', action='store_true',
                   help='tiny sizes: a smoke run of every section')
    p.add_argument('--sections', nargs='+', choices=SECTIONS,
                   default=list(SECTIONS),
                   help='run only these (env always runs first)')
    p.add_argument('--wheelhouse', default=DEFAULT_WHEELHOUSE,
                   help='wheels to install what is missing from (default: '
                   '%(default)s)')
    p.add_argument('--track-frames', type=int, default=300,
                   help='frames per tools/track.py run (default: '
                   '%(default)s)')
    p.add_argument('--section-timeout', type=float, default=480,
                   help='seconds before a section is killed (default: '
                   '%(default)s)')
    p.add_argument('--time-limit', type=float,
                   help='seconds for the whole run (a device call\'s limit '
                   'less a margin): a section gets at most what is left, '
                   f'and is skipped with under {MIN_SECTION_SECONDS} s left '
                   '(default: no limit)')
    p.add_argument('--section', choices=SECTIONS, help=argparse.SUPPRESS)
    p.add_argument('--result', help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.section and not args.out:
        p.error('--out DIR is required')
    for option in ('section_timeout', 'time_limit'):
        value = getattr(args, option)
        if value is not None and not (math.isfinite(value) and value > 0):
            p.error(f'--{option.replace("_", "-")} must be a positive '
                    f'number of seconds, got {value}')
    if args.track_frames < 1:
        p.error(f'--track-frames must be at least 1, got {args.track_frames}')
    return args


def main() -> None:
    started = time.monotonic()
    args = parse_args()
    if args.section:
        return run_in_child(args)
    os.makedirs(args.out, exist_ok=True)
    logs = osp.join(args.out, 'logs')
    os.makedirs(logs, exist_ok=True)
    report = dict(
        date=datetime.datetime.now().strftime('%Y-%m-%d %H:%M'),
        command=' '.join(['python', 'benchmarks/gpu_check.py'] +
                         sys.argv[1:]),
        device=args.device, quick=args.quick, machine={}, sections={})
    site = site_folder(args.wheelhouse)
    env = child_env(site)
    missing = missing_requirements(env)
    with open(osp.join(logs, 'install.log'), 'w') as log:
        try:
            install_missing(missing, args.wheelhouse, site, env, log)
            install_error = None
        except Exception as e:
            install_error = str(e)
    sections = ordered_sections(args.sections)
    # A run stopped from outside still reports what it measured, and the
    # running section's child (its own session) does not outlive it.
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        for name in sections:
            print(f'gpu_check: {name} ...', flush=True)
            start = time.monotonic()
            left = (math.inf if args.time_limit is None else
                    args.time_limit - (start - started))
            timeout = min(args.section_timeout, left)
            if left < MIN_SECTION_SECONDS:
                result = dict(status='skipped', seconds=0.0, error=(
                    f'{max(left, 0):.0f} s of --time-limit '
                    f'{args.time_limit:.0f} left'))
                report['sections'][name] = result
                print(f'gpu_check: {name} skipped: {result["error"]}',
                      flush=True)
                write_report(report, args.out)
                continue
            result = run_section(name, args, env, logs, timeout)
            if result.pop('interrupted', False):
                report['sections'][name] = result
                break
            if name == 'env':
                report['machine'] = result.get('details', {})
                note = ('installed from the wheelhouse: ' + ', '.join(missing)
                        if missing else 'nothing to install')
                if install_error:
                    note = 'install failed'
                    result['status'] = 'failed'
                    result['error'] = install_error
                result.setdefault('rows', []).insert(
                    0, row('missing packages', len(missing), note=note))
            report['sections'][name] = result
            print(f'gpu_check: {name} {result["status"]} in '
                  f'{result["seconds"]:.0f} s' + (
                      f': {result["error"].splitlines()[0][:300]}'
                      if result.get('error') else ''), flush=True)
            write_report(report, args.out)
    except (Interrupted, KeyboardInterrupt) as e:
        # Between sections (within one, run_section ends its child and
        # returns): the first section not yet reported is failed with it.
        why = f'{e or "interrupted"} before it ended'
        pending = [n for n in sections if n not in report['sections']]
        if pending:
            report['sections'][pending[0]] = dict(status='failed',
                                                  seconds=0.0, error=why)
        else:
            report['interrupted'] = why
    report['ok'] = not report.get('interrupted') and not any(
        s['status'] == 'failed' for s in report['sections'].values())
    print('\n' + write_report(report, args.out))
    print(f'gpu_check: results in {args.out}/gpu_check.json and '
          'gpu_check.md')
    sys.exit(0 if report['ok'] else 1)


if __name__ == '__main__':
    main()
