"""Build a TensorRT engine from an sfc_plugin ONNX model.

    python export/to_trt.py work_dirs/onnx/sfc_davis-fp16.onnx \\
        --shape images=1x3x240x432:1x3x480x864:4x3x480x864

writes trt_engines/<name>.engine and trt_engines/<name>.json (settings,
versions, hashes, and the check against ONNX Runtime). Shapes, names and
files are checked before TensorRT is touched; without TensorRT or a CUDA
GPU it stops with one message saying which is missing. Engines are specific
to the GPU and TensorRT version that built them, and are never committed.

Precision is the ONNX model's: the network is strongly typed (TensorRT 11
has no other kind; TensorRT 10.7+ offers it as a flag), so an fp16 export
(``export/to_onnx.py --fp16``) gives an fp16 engine. TensorRT 10.7 to 11.x
are supported by the same code.
"""
import argparse
import json
import math
import os
import os.path as osp
import sys
import time
from typing import Dict, List, Tuple

import numpy as np
import onnx

Shape = Tuple[int, ...]
#: Largest --workspace (GiB): TensorRT caps the pool at the GPU's memory
#: anyway, and larger values overflow its size_t.
MAX_WORKSPACE_GIB = 1024
#: Largest profile dimension: far beyond any frame, and within the int32
#: of TensorRT 8's Dims (TensorRT 10's are int64).
MAX_DIM = 2**31 - 1
DEFAULT_OUT_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                           'trt_engines')


def parse_profile(specs: List[str]) -> Dict[str, Tuple[Shape, Shape, Shape]]:
    """``name=MIN:OPT:MAX`` with shapes like ``1x3x240x432``."""
    profile = {}
    for spec in specs:
        name, sep, shapes = spec.partition('=')
        parts = shapes.split(':')
        if not sep or len(parts) != 3:
            raise ValueError(f'--shape "{spec}": expected '
                             'NAME=MIN:OPT:MAX, e.g. images=1x3x240x432:'
                             '1x3x480x864:4x3x480x864')
        if name in profile:
            raise ValueError(f'--shape "{spec}": "{name}" is given twice')
        try:
            dims = [tuple(int(d) for d in p.lower().split('x')) for p in parts]
        except ValueError:
            raise ValueError(f'--shape "{spec}": dimensions must be '
                             'integers joined by x') from None
        if any(d > MAX_DIM for shape in dims for d in shape):
            raise ValueError(f'--shape "{spec}": dimensions must be <= '
                             f'{MAX_DIM} (TensorRT\'s limit)')
        lo, opt, hi = dims
        if not len(lo) == len(opt) == len(hi):
            raise ValueError(f'--shape "{spec}": min, opt and max differ in '
                             'rank')
        if any(d < 1 for d in lo) or not all(
                a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise ValueError(f'--shape "{spec}": need 1 <= min <= opt <= max '
                             f'in every dimension, got {lo}, {opt}, {hi}')
        profile[name] = (lo, opt, hi)
    return profile


def check_profile(model: onnx.ModelProto, profile, path: str) -> None:
    """The profile must cover exactly the graph's dynamic inputs, with
    their ranks and fixed dimensions."""
    inputs = {i.name: i for i in model.graph.input}
    unknown = sorted(set(profile) - set(inputs))
    if unknown:
        raise ValueError(f'{path} has no input(s) {unknown}; its inputs are '
                         f'{sorted(inputs)} (an ONNX file of another model?)')
    for name, value in inputs.items():
        dims = value.type.tensor_type.shape.dim
        fixed = [d.dim_value if d.HasField('dim_value') else None
                 for d in dims]
        if name not in profile:
            if None in fixed:
                raise ValueError(f'{path}: input "{name}" has dynamic '
                                 f'dimensions {fixed}: give --shape {name}='
                                 'MIN:OPT:MAX')
            continue
        for shape in profile[name]:
            if len(shape) != len(fixed) or any(
                    f is not None and f != s for f, s in zip(fixed, shape)):
                raise ValueError(
                    f'{path}: --shape for "{name}" {shape} does not fit the '
                    f'input\'s dimensions {fixed} (None = dynamic)')


def require_tensorrt():
    """TensorRT, of a supported version, and a CUDA GPU; else one message."""
    from sfc_plugin.deploy.backends import require_tensorrt as load
    try:
        trt = load('Building an engine')
    except ImportError as err:
        raise ImportError(f'{err}; nothing was built') from None
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError('no CUDA GPU is visible; TensorRT engines are '
                           'built on the GPU that will run them. Nothing was '
                           'built.')
    return trt


def network_flags(trt) -> int:
    """Creation flags of a strongly typed network (precision from the
    ONNX): a flag in TensorRT 10, the only kind (flag kept for
    compatibility, or gone) in 11. Explicit batch is implied since 10."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, 'STRONGLY_TYPED', None)
    return 0 if flag is None else 1 << int(flag)


def _checked(ok, what: str):
    """TensorRT's Python API reports many failures as False / None / -1."""
    if ok is False or ok is None or (isinstance(ok, int)
                                     and not isinstance(ok, bool) and ok < 0):
        raise RuntimeError(f'TensorRT refused to {what} (see its log above)')
    return ok


def build_engine(trt, onnx_path: str, profile, workspace_gib: float,
                 timing_cache: str) -> bytes:
    """Parses the ONNX into a strongly typed network and builds it with one
    optimisation profile, reusing and updating the timing cache; every
    call's result is checked.

    Raises:
        RuntimeError: TensorRT refused a step (the parser's errors named).
    """
    logger = trt.Logger(trt.Logger.WARNING)
    model = onnx.load(onnx_path)
    from sfc_plugin.deploy.onnxruntime_ops import has_custom_nodes
    if has_custom_nodes(model):
        from sfc_plugin.deploy.tensorrt_plugin import register_tensorrt_plugin
        register_tensorrt_plugin()
    builder = _checked(trt.Builder(logger), 'create a builder')
    network = _checked(builder.create_network(network_flags(trt)),
                       'create a network')
    parser = _checked(trt.OnnxParser(network, logger), 'create a parser')
    if not parser.parse_from_file(onnx_path):
        errors = '; '.join(
            str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f'TensorRT cannot parse {onnx_path}: {errors}')
    config = _checked(builder.create_builder_config(),
                      'create a builder config')
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE,
                                 int(workspace_gib * 2**30))
    opt_profile = _checked(builder.create_optimization_profile(),
                           'create an optimisation profile')
    for name, (lo, opt, hi) in profile.items():
        _checked(opt_profile.set_shape(name, lo, opt, hi) is not False,
                 f'set the profile of "{name}" to {lo}:{opt}:{hi}')
    _checked(config.add_optimization_profile(opt_profile),
             'add the optimisation profile')
    cache_bytes = b''
    if osp.isfile(timing_cache):
        with open(timing_cache, 'rb') as f:
            cache_bytes = f.read()
    cache = _checked(config.create_timing_cache(cache_bytes),
                     f'read the timing cache "{timing_cache}"')
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # A cache of another GPU or TensorRT: start a fresh one.
        print(f'to_trt.py: the timing cache "{timing_cache}" belongs to '
              'another GPU or TensorRT version; starting a new one',
              file=sys.stderr)
        cache = _checked(config.create_timing_cache(b''),
                         'create a timing cache')
        _checked(config.set_timing_cache(cache, ignore_mismatch=False),
                 'use a new timing cache')
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f'TensorRT could not build an engine from '
                           f'{onnx_path} (see the log above)')
    from sfc_plugin.utils.fileio import atomic_output, write_bytes
    with atomic_output(timing_cache) as tmp:
        write_bytes(tmp, bytes(memoryview(
            config.get_timing_cache().serialize())), atomic=False)
    return bytes(engine)


def onnx_precision(model: onnx.ModelProto) -> str:
    """'fp16' when the model's first input is float16, else 'fp32'."""
    elem = model.graph.input[0].type.tensor_type.elem_type
    return 'fp16' if elem == onnx.TensorProto.FLOAT16 else 'fp32'


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='\n'.join(__doc__.splitlines()[2:]))
    p.add_argument('onnx', help='ONNX model from export/to_onnx.py')
    p.add_argument('--name', help='engine name (default: the ONNX stem)')
    p.add_argument('--out-dir', default=DEFAULT_OUT_DIR)
    p.add_argument('--shape', action='append', default=[],
                   metavar='NAME=MIN:OPT:MAX',
                   help='optimisation profile of a dynamic input, e.g. '
                   'images=1x3x240x432:1x3x480x864:4x3x480x864')
    # Precision comes from the ONNX graph (strongly typed networks).
    p.add_argument('--fp16', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--workspace', type=float, default=4, help='GiB')
    p.add_argument('--timing-cache',
                   help='default: <out-dir>/timing.cache (shared by builds)')
    p.add_argument('--atol', type=float,
                   help='check tolerance (default 1e-3 fp32, 2e-2 fp16)')
    from sfc_plugin.utils.cli import add_debug_argument
    add_debug_argument(p)
    args = p.parse_args(argv)
    # Checked here, before TensorRT is looked for: a bad value is the
    # user's to fix whatever the machine has.
    if not (math.isfinite(args.workspace)
            and 0 < args.workspace <= MAX_WORKSPACE_GIB):
        p.error(f'--workspace must be in (0, {MAX_WORKSPACE_GIB}] GiB, got '
                f'{args.workspace:g}')
    if args.atol is not None and not (math.isfinite(args.atol)
                                      and args.atol >= 0):
        p.error(f'--atol must be a finite number >= 0, got {args.atol:g}')
    if args.fp16:
        p.error('--fp16: the engine takes the ONNX model\'s precision '
                '(TensorRT builds strongly typed networks); build from an '
                'fp16 export (export/to_onnx.py --fp16)')
    return args


def check_engine_name(name: str) -> None:
    """``--name`` is a file name in ``--out-dir``: not empty, no folder
    (``fc/`` would write ``fc/.engine``), not hidden."""
    seps = tuple(filter(None, (os.sep, os.altsep)))
    if not name.strip() or name.startswith('.') or any(
            sep in name for sep in seps) or '\0' in name:
        raise ValueError(f'--name "{name}": give a plain file name (no '
                         'folder, not starting with a dot); the engine goes '
                         'in --out-dir')


def main(argv=None):
    args = parse_args(argv)
    if osp.isdir(args.onnx):
        raise IsADirectoryError(f'"{args.onnx}" is a folder, not an ONNX '
                                'file')
    if not osp.isfile(args.onnx):
        raise FileNotFoundError(f'ONNX file not found: "{args.onnx}"')
    if args.name is not None:
        check_engine_name(args.name)
    try:
        model = onnx.load(args.onnx, load_external_data=False)
    except Exception as e:  # not an ONNX file at all
        raise ValueError(f'cannot read "{args.onnx}" as ONNX: '
                         f'{type(e).__name__}') from None
    if not model.graph.input:
        # An empty file parses as an empty model.
        raise ValueError(f'"{args.onnx}" holds no graph with inputs (an '
                         'empty file, or not a model of export/to_onnx.py)')
    profile = parse_profile(args.shape)
    check_profile(model, profile, args.onnx)
    from sfc_plugin.deploy.onnx_export import publish_report
    from sfc_plugin.deploy.provenance import report_owner, report_paths
    from sfc_plugin.utils.fileio import (
        atomic_output,
        check_output_location,
        check_writable_dir,
        check_writable_file,
        remove_file,
        sha256,
        write_bytes,
    )
    name = args.name or osp.splitext(osp.basename(args.onnx))[0]
    precision = onnx_precision(model)
    engine_path = osp.join(args.out_dir, name + '.engine')
    reports = report_paths(engine_path)
    # An empty --timing-cache is check_writable_file's to refuse, not a
    # cue for the default.
    cache = (osp.join(args.out_dir, 'timing.cache')
             if args.timing_cache is None else args.timing_cache)
    check_writable_dir(args.out_dir, '--out-dir')
    check_writable_file(cache, '--timing-cache')
    # An export report is read whenever its model is deployed
    # (deploy/provenance.py): an engine named after an ONNX in its folder
    # (this one, through a link too, or another export) would replace it.
    inputs = {'ONNX file': args.onnx,
              "ONNX file's export report": report_paths(args.onnx).passed,
              "ONNX file's export report (the link resolved)":
              report_paths(osp.realpath(args.onnx)).passed}
    outputs = {'Output': (engine_path, *reports),
               '--timing-cache': (cache, )}
    for what, paths in outputs.items():
        for output in paths:
            check_output_location(output, inputs, what)
            owner = report_owner(output)
            if owner is not None:
                raise ValueError(
                    f'{what} "{output}" is the export report of "{owner}": '
                    'choose another --out-dir or --name')
    # The cache is read and rewritten: it may be no other output either.
    check_output_location(
        cache, {'engine': engine_path, 'report': reports.passed,
                'failure report': reports.failed}, '--timing-cache')
    if cache.endswith(('.onnx', '.engine', '.json')):
        raise ValueError(f'--timing-cache "{cache}" is named like a model or '
                         'a report: give a file of its own, e.g. '
                         'timing.cache')
    trt = require_tensorrt()

    start = time.perf_counter()
    engine = build_engine(trt, args.onnx, profile, args.workspace, cache)
    build_s = time.perf_counter() - start

    check = None
    import torch

    from sfc_plugin.deploy.backends import TensorRTBackend
    try:
        from sfc_plugin.deploy.onnxruntime_ops import onnxruntime_session
        session = onnxruntime_session(args.onnx)
    except ImportError:
        session = None
    if session is not None:
        rng = np.random.default_rng(0)
        from sfc_plugin.deploy.onnxruntime_ops import session_input_dtype
        dtypes = {arg.name: session_input_dtype(session, i)
                  for i, arg in enumerate(session.get_inputs())}
        feeds = {n: rng.standard_normal(opt).astype(
            torch.empty(0, dtype=dtypes[n]).numpy().dtype)
                 for n, (_, opt, _) in profile.items()}
        expected = dict(zip([o.name for o in session.get_outputs()],
                            session.run(None, feeds)))
        got = TensorRTBackend(engine).run(
            {n: torch.from_numpy(v) for n, v in feeds.items()})
        diffs = [float(np.abs(got[n].cpu().double().numpy() - e).max())
                 for n, e in expected.items()]
        atol = args.atol if args.atol is not None else (
            2e-2 if precision == 'fp16' else 1e-3)
        check = dict(max_abs_diff=diffs, atol=atol, passed=max(diffs) <= atol)
        if not check['passed']:
            raise RuntimeError(
                'the engine disagrees with ONNX Runtime at the opt shapes: '
                f'max abs diff {max(diffs):.3g} > {atol:g}; nothing written')
    with atomic_output(engine_path) as tmp:
        write_bytes(tmp, bytes(engine), atomic=False)
        report = dict(engine=engine_path, onnx=args.onnx,
                      onnx_sha256=sha256(args.onnx), engine_sha256=sha256(tmp),
                      precision=precision,
                      profile={n: [list(s) for s in v]
                               for n, v in profile.items()},
                      tensorrt=trt.__version__, build_seconds=build_s,
                      check_against_onnxruntime=check)
        # The earlier engine's report must not outlive it (a run stopped
        # between the two renames leaves an engine without a report).
        remove_file(reports.passed)
    publish_report(report, engine_path)
    print(json.dumps(report, indent=1))


if __name__ == '__main__':
    from sfc_plugin.utils.cli import run_tool
    run_tool(main, 'to_trt.py')
