"""Builds and loads the native kernels of :mod:`sfc_plugin.ops`.

The C++ (and, where torch has CUDA, CUDA) sources under ``ops/csrc`` are
compiled on first use with :func:`torch.utils.cpp_extension.load`, not at
install: the library must match the exact torch the user runs (its ABI
changes between releases), and an install-time build would have to fight
pip's isolated build environments, which pull a different torch. The build
(about 20 s for the CPU kernel) prints one line on stderr when it starts
and one when it ends; later processes load the cached library silently.

Build folder: ``<cache root>/sfc_plugin_ops-torch<version>-py<XY>-<cpu or
cuXY>-<CPU flags hash>-<install hash>``. The CPU flags hash keeps machines
with different instruction sets apart (the kernel is built with
``-march=native``); the install hash, of where these sources and torch are
installed, keeps two environments (venvs, site-packages) with the same
torch and Python from rebuilding over each other.

Concurrency: a process holds an ``fcntl.flock`` on ``sfc_plugin.lock`` in
the build folder while it builds and loads. The kernel releases it when
the process dies, so a build killed part-way never blocks the next one:
under that lock any ``lock`` file of torch's own (which torch leaves
behind when killed, and then waits on forever) is stale and is removed,
with a notice. A process that finds another one building says so on
stderr and waits at most ``SFC_PLUGIN_OPS_BUILD_TIMEOUT`` seconds, then
uses the pure-PyTorch implementation with a warning. Without ``fcntl``
(Windows) there is no such lock, and a torch ``lock`` file older than that
timeout is taken for stale.

Environment:
    ``SFC_PLUGIN_NATIVE_OPS=0``: never build; use the pure-PyTorch
    implementation everywhere.
    ``SFC_PLUGIN_OPS_CACHE``: build cache root (default
    ``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``).
    ``TORCH_EXTENSIONS_DIR``: cache root when ``SFC_PLUGIN_OPS_CACHE`` is
    not set.
    ``SFC_PLUGIN_OPS_BUILD_TIMEOUT``: seconds to wait for another process's
    build of the same folder (default 900).
    ``SFC_PLUGIN_DISABLE_BF16_DOT=1``: the CPU kernel scores bfloat16
    features through float32 even where the CPU has AVX512_BF16 (read at
    every call; for tests and comparisons).
    ``SFC_PLUGIN_TENSOR_CORES=0``: the CUDA kernel scores every feature
    type on CUDA cores (read at every call). Unset or 1, it scores float16
    and bfloat16 features on tensor cores, and float32 ones there too in
    3xTF32 (float32 accuracy), on sm_80 and later.
    ``SFC_PLUGIN_FRAME_GROUPS=N``: the CUDA kernel splits the frames into N
    groups (1 to 64, at most the frames) instead of its launch plan's
    number (unset or 0); the neighbours are the same. Read at every call;
    ``benchmarks/cuda_frame_groups.py`` times the plan against the others.
    ``SFC_PLUGIN_GROUP_BY=chunks``: a group is a share of every frame's key
    chunks instead of a share of the frames (``frames``, unset or empty):
    equally long blocks that read the same frame at once; the same
    neighbours. Read at every call; timed by the same script.

``python -m sfc_plugin.ops`` builds ahead of time and reports the result.

Compile-only check of the CUDA sources (no GPU, no CUDA torch needed):
:func:`compile_cuda_sources`, or ``python -m sfc_plugin.ops --compile-only
cuda``, compiles the op's schema file and the CUDA kernel to object files
with the flags a CUDA build of :func:`load_native_ops` uses, for the GPU
architectures asked for (sm_80 and sm_90 by default), against the installed
torch's headers. A CPU torch wheel ships the ATen/c10 CUDA headers except
the generated ``c10/cuda/impl/cuda_cmake_macros.h``, which is then supplied
from a temporary folder. Nothing is linked or loaded.
"""
import contextlib
import dataclasses
import hashlib
import inspect
import os
import os.path as osp
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
from typing import Iterator, List, Optional, Sequence, Tuple

import torch

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

__all__ = [
    'CompileResult', 'NvccNotFoundError', 'compile_cuda_sources',
    'load_native_ops', 'native_ops_available', 'native_ops_status'
]

CSRC = osp.join(osp.dirname(osp.abspath(__file__)), 'csrc')
#: The op schemas (and, with SFC_WITH_CUDA, the CUDA kernel's declaration).
SCHEMA_SOURCE = 'topk_window_match.cpp'
CPU_SOURCES = (SCHEMA_SOURCE, 'cpu/topk_window_match_cpu.cpp')
CUDA_SOURCES = ('cuda/topk_window_match_cuda.cu', )
LIBRARY_NAME = 'sfc_plugin_ops'
#: Our lock in the build folder, and torch's (``cpp_extension``'s baton).
LOCK_FILE = 'sfc_plugin.lock'
TORCH_LOCK_FILE = 'lock'
#: Signature of the last successful build, to tell a build from a load.
STAMP_FILE = 'sfc_plugin.stamp'
DEFAULT_BUILD_TIMEOUT = 15 * 60
#: Waits shorter than this stay silent: another process loading the
#: cached library holds the lock for a moment too.
_QUIET_WAIT = 1.0

_state = dict(tried=False, devices=frozenset(), error=None, path=None)


def _say(message: str) -> None:
    print(f'sfc_plugin: {message}', file=sys.stderr, flush=True)


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _cpu_tag() -> str:
    """Short hash of the CPU's instruction-set flags: the CPU kernel is
    built with ``-march=native``, so a cache shared by different machines
    (an NFS home) must not hand one CPU another's library."""
    flags = platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            flags += next((line for line in f
                           if line.startswith(('flags', 'Features'))), '')
    except OSError:
        flags += platform.processor()
    return _short_hash(flags)


def _install_tag() -> str:
    """Short hash of where these sources and torch are installed. Two
    environments with the same torch and Python would otherwise share a
    folder, and each would rebuild it for its own source paths."""
    return _short_hash(
        os.pathsep.join(
            osp.realpath(p) for p in (CSRC, osp.dirname(torch.__file__))))


def _cache_tag(with_cuda: bool) -> str:
    """Name of the build folder for this interpreter, torch and install."""
    cuda = f'cu{torch.version.cuda}' if with_cuda else 'cpu'
    tag = (f'{LIBRARY_NAME}-torch{torch.__version__}-'
           f'py{sys.version_info[0]}{sys.version_info[1]}-{cuda}-'
           f'{_cpu_tag()}-{_install_tag()}')
    return tag.replace('+', '_')


def _build_directory(with_cuda: bool) -> str:
    root = os.environ.get('SFC_PLUGIN_OPS_CACHE') or os.environ.get(
        'TORCH_EXTENSIONS_DIR') or osp.join(
            osp.expanduser('~'), '.cache', 'torch_extensions')
    path = osp.join(root, _cache_tag(with_cuda))
    os.makedirs(path, exist_ok=True)
    return path


def _cuda_buildable() -> bool:
    from torch.utils.cpp_extension import CUDA_HOME
    return (torch.cuda.is_available() and torch.version.cuda is not None
            and CUDA_HOME is not None)


def _build_timeout() -> float:
    value = os.environ.get('SFC_PLUGIN_OPS_BUILD_TIMEOUT', '')
    if not value:
        return DEFAULT_BUILD_TIMEOUT
    try:
        return float(value)
    except ValueError:
        raise ValueError('SFC_PLUGIN_OPS_BUILD_TIMEOUT must be a number of '
                         f'seconds, got {value!r}') from None


def _try_flock(f) -> bool:
    """Takes the lock if free; False if another process holds it. Other
    errors (a file system without locks) propagate."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextlib.contextmanager
def _build_lock(build_dir: str, timeout: float) -> Iterator[bool]:
    """Holds the build folder's lock: yields True once held (no other
    process builds or loads there until the block ends), False where
    there is no lock to take (no ``fcntl``, or a file system that refuses
    ``flock``). Raises ``TimeoutError`` after ``timeout`` seconds of
    waiting for another process."""
    if fcntl is None:
        yield False
        return
    path = osp.join(build_dir, LOCK_FILE)
    with open(path, 'a+') as f:
        try:
            free = _try_flock(f)
        except OSError:  # ENOLCK and the like: build without our lock
            free = None
        if free is None:
            yield False
            return
        if not free:
            start = time.monotonic()
            announced = False
            while not _try_flock(f):
                waited = time.monotonic() - start
                if waited >= timeout:
                    raise TimeoutError(
                        f'waited {waited:.0f} s for another process '
                        f'building in {build_dir} (raise '
                        'SFC_PLUGIN_OPS_BUILD_TIMEOUT to wait longer)')
                if not announced and waited >= _QUIET_WAIT:
                    f.seek(0)
                    holder = f.read().strip() or '?'
                    _say('waiting for another process (pid '
                         f'{holder}) building the native kernels in '
                         f'{build_dir} (at most {timeout:.0f} s) ...')
                    announced = True
                time.sleep(0.2)
        # Who holds it, for the message of processes that wait.
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_stale_torch_lock(build_dir: str, locked: bool,
                             timeout: float) -> None:
    """Removes torch's ``lock`` file left by a build that was killed:
    torch would wait on it forever. Under our lock it is stale by
    construction; without one, only once older than ``timeout``."""
    path = osp.join(build_dir, TORCH_LOCK_FILE)
    try:
        age = time.time() - os.stat(path).st_mtime
    except OSError:
        return
    if locked or age > timeout:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        _say(f'removed the stale lock {path} of an interrupted build')


def _source_files(with_cuda: bool) -> List[str]:
    """Every file the build reads from ``csrc``, headers included."""
    suffixes = ('.h', '.cpp') + (('.cu', '.cuh') if with_cuda else ())
    return sorted(
        osp.join(root, name) for root, _, names in os.walk(CSRC)
        for name in names if name.endswith(suffixes))


def _build_needed(build_dir: str, signature: str, with_cuda: bool) -> bool:
    """Whether loading will compile: no library yet, one built with other
    settings (the stamp), or sources newer than it (what ninja looks at).
    It may say yes where ninja then finds nothing to do (a file touched
    but unchanged), never no where it compiles."""
    library = osp.join(build_dir,
                       LIBRARY_NAME + ('.pyd' if os.name == 'nt' else '.so'))
    try:
        built = os.stat(library).st_mtime
        with open(osp.join(build_dir, STAMP_FILE)) as f:
            if f.read() != signature:
                return True
    except OSError:
        return True
    return any(
        os.stat(p).st_mtime > built for p in _source_files(with_cuda))


def _build_flags(with_cuda: bool) -> Tuple[List[str], List[str], List[str]]:
    """Our flags on top of torch's own: host compiler, nvcc, linker."""
    cflags = ['-O3']
    if os.name != 'nt':
        cflags += ['-march=native', '-fopenmp']
    if platform.machine() in ('x86_64', 'AMD64'):
        cflags.append('-mprefer-vector-width=512')
    if with_cuda:
        cflags.append('-DSFC_WITH_CUDA')
    cuda_cflags = ['-O3', '-DSFC_WITH_CUDA']
    ldflags = ['-fopenmp'] if os.name != 'nt' else []
    return cflags, cuda_cflags, ldflags


def _fail(error: Exception) -> bool:
    _state['error'] = f'{type(error).__name__}: {error}'
    warnings.warn(
        'sfc_plugin: could not build the native topk_window_match '
        f'kernels ({_state["error"].splitlines()[0]}); using the '
        'pure-PyTorch implementation, which is several times slower. '
        'Run `python -m sfc_plugin.ops` for the full build log, or set '
        'SFC_PLUGIN_NATIVE_OPS=0 to choose it silently.')
    return False


def load_native_ops(verbose: bool = False) -> bool:
    """Builds (once) and loads the native kernels.

    A failed build, or a wait for another process's build beyond
    ``SFC_PLUGIN_OPS_BUILD_TIMEOUT``, warns once, naming the cause, and
    leaves the pure-PyTorch implementation in charge; it is not retried in
    this process.

    Args:
        verbose (bool): Show the compiler's output. Defaults to False.

    Returns:
        bool: Whether the native kernels are loaded.
    """
    if _state['tried']:
        return bool(_state['devices'])
    _state['tried'] = True
    if os.environ.get('SFC_PLUGIN_NATIVE_OPS', '1') == '0':
        _state['error'] = 'disabled by SFC_PLUGIN_NATIVE_OPS=0'
        return False
    from torch.utils import cpp_extension
    with_cuda = _cuda_buildable()
    sources = [osp.join(CSRC, s) for s in CPU_SOURCES]
    if with_cuda:
        sources += [osp.join(CSRC, s) for s in CUDA_SOURCES]
    cflags, cuda_cflags, ldflags = _build_flags(with_cuda)
    signature = repr((sources, cflags, cuda_cflags, ldflags))
    try:
        timeout = _build_timeout()
        build_dir = _build_directory(with_cuda)
        _state['path'] = build_dir
        with _build_lock(build_dir, timeout) as locked:
            _remove_stale_torch_lock(build_dir, locked, timeout)
            building = _build_needed(build_dir, signature, with_cuda)
            if building:
                _say('compiling the native matching kernels (one time, '
                     f'about {"2 min" if with_cuda else "20 s"}) in '
                     f'{build_dir} ...')
            start = time.monotonic()
            cpp_extension.load(
                name=LIBRARY_NAME,
                sources=sources,
                extra_cflags=cflags,
                extra_cuda_cflags=cuda_cflags,
                extra_ldflags=ldflags,
                build_directory=build_dir,
                is_python_module=False,
                verbose=verbose)
            if building:
                with open(osp.join(build_dir, STAMP_FILE), 'w') as f:
                    f.write(signature)
                _say('native kernels compiled in '
                     f'{time.monotonic() - start:.1f} s')
    except Exception as e:  # compiler missing, headers, timeout, ...
        return _fail(e)
    _register_fake_kernels()
    _state['devices'] = frozenset(['cpu', 'cuda'] if with_cuda else ['cpu'])
    return True


def native_ops_available(device: Optional[torch.device] = None) -> bool:
    """Whether a native kernel serves tensors on ``device`` (any device if
    None), building the kernels on first call."""
    if not load_native_ops():
        return False
    return device is None or torch.device(device).type in _state['devices']


def native_ops_status() -> str:
    """One line saying which kernels are loaded, or why none are."""
    if not _state['tried']:
        load_native_ops()
    if _state['devices']:
        return ('native kernels loaded for ' +
                ', '.join(sorted(_state['devices'])))
    return f'native kernels unavailable: {_state["error"]}'


def neighbour_weights_dtype(features: torch.dtype) -> torch.dtype:
    """Type of the softmax weights of ``sfc::topk_window_neighbours`` and
    of every PyTorch form of it, for features of type ``features``: float32
    for float16 and bfloat16, the features' type otherwise (the kernels'
    ``neighbour_weights_type``)."""
    return (torch.float32 if features in (torch.float16, torch.bfloat16)
            else features)


def _register_fake_kernels() -> None:
    """Shape-only implementations, so that ``torch.compile`` and
    ``torch.export`` trace through the ops without running them."""

    @torch.library.register_fake('sfc::topk_window_neighbours')
    def _(query, keys, topk, radius, temperature, unrestricted_keys=1):
        shape = (keys.shape[0], keys.shape[3], keys.shape[4], topk)
        return (query.new_empty(shape,
                                dtype=neighbour_weights_dtype(query.dtype)),
                query.new_empty(shape, dtype=torch.long))

    @torch.library.register_fake('sfc::topk_window_match')
    def _(query,
          keys,
          key_labels,
          topk,
          radius,
          temperature,
          unrestricted_keys=1):
        b, _, k, h, w = key_labels.shape
        return key_labels.new_empty((b, k, h, w))


# Compile-only check of the CUDA sources ------------------------------------

#: What ``--compile-only cuda`` compiles, in this order: the schema file
#: takes seconds, so a broken tree fails before the kernel's far longer
#: compile starts.
COMPILE_ONLY_SOURCES = (SCHEMA_SOURCE, ) + CUDA_SOURCES
DEFAULT_CUDA_ARCHS = (80, 90)
#: The one generated header a CPU torch wheel leaves out, and its content
#: in a CUDA torch built with shared libraries (every wheel).
CUDA_CMAKE_MACROS = osp.join('c10', 'cuda', 'impl', 'cuda_cmake_macros.h')
CUDA_CMAKE_MACROS_STUB = '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n'
_ERROR = re.compile(r'\b(error|fatal)\b', re.IGNORECASE)
_WARNING = re.compile(r'\bwarning\b', re.IGNORECASE)
#: Where a new diagnostic starts: gcc's ``file:line:col:``, nvcc's
#: ``file(line):``.
_DIAGNOSTIC = re.compile(r'^\S.*?(:\d+:\d+:|\(\d+\):)')


class NvccNotFoundError(RuntimeError):
    """No nvcc to compile the CUDA sources with."""


@dataclasses.dataclass
class CompileResult:
    """One translation unit compiled by :func:`compile_cuda_sources`.

    Attributes:
        source (str): Path of the unit under the sources folder.
        compiler (str): Who compiled it, e.g. ``nvcc 13.0`` or ``c++``.
        status (str): ``ok``, ``failed``, or ``skipped`` (not compiled
            because an earlier unit failed).
        seconds (float): Wall time of the compile.
        command (list[str]): The command line.
        output (str): Everything the compiler printed.
        first_error (str): The first error line and a few lines of context
            after it ('' when the compile passed).
        own_warnings (list[str]): Warning lines about the sources compiled
            (those about torch's or CUDA's headers are left out).
    """
    source: str
    compiler: str
    status: str
    seconds: float = 0.0
    command: List[str] = dataclasses.field(default_factory=list)
    output: str = ''
    first_error: str = ''
    own_warnings: List[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == 'ok'


def _first_error(output: str, context: int = 3) -> str:
    """The first error line and up to ``context`` lines after it (the
    source line and caret both compilers print), up to the next
    diagnostic; the log's last lines when no line says error (a killed
    compiler, say)."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if _ERROR.search(line):
            block = [line]
            for extra in lines[i + 1:i + 1 + context]:
                if not extra.strip() or _DIAGNOSTIC.match(extra):
                    break
                block.append(extra)
            return '\n'.join(block)
    return '\n'.join(lines[-context:]) or '(the compiler printed nothing)'


def _own_warnings(output: str, csrc: str) -> List[str]:
    """Warning lines that name a file of ``csrc``; torch's headers warn
    under some standards and are not ours to fix."""
    # The diagnostic may name the file relative to the working folder.
    names = (osp.realpath(csrc), osp.abspath(csrc), csrc)
    return [
        line for line in output.splitlines()
        if _WARNING.search(line) and any(n in line for n in names)
    ]


def _find_nvcc() -> str:
    """nvcc on PATH, else under ``$CUDA_HOME`` / ``$CUDA_PATH``."""
    found = shutil.which('nvcc')
    if found:
        return found
    for var in ('CUDA_HOME', 'CUDA_PATH'):
        candidate = osp.join(os.environ.get(var) or '', 'bin', 'nvcc')
        if os.environ.get(var) and os.access(candidate, os.X_OK):
            return candidate
    raise NvccNotFoundError(
        'nvcc not found (not on PATH, nor under $CUDA_HOME/bin): install '
        'the CUDA toolkit to compile the CUDA sources')


def _cuda_home(nvcc: str) -> Optional[str]:
    """The toolkit nvcc belongs to. ``$CUDA_HOME`` / ``$CUDA_PATH`` first,
    as torch does; else nvcc's own answer, which holds where nvcc on PATH
    is a wrapper script outside the toolkit."""
    for var in ('CUDA_HOME', 'CUDA_PATH'):
        if os.environ.get(var):
            return os.environ[var]
    try:
        dry = subprocess.run(
            [nvcc, '--dryrun', '-x', 'cu', '-c', os.devnull, '-o',
             os.devnull], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'^#\$ TOP=(.+)$', dry.stdout + dry.stderr, re.M)
    return osp.normpath(match.group(1).strip()) if match else None


def _nvcc_version(nvcc: str) -> str:
    try:
        out = subprocess.run([nvcc, '--version'], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 'nvcc'
    match = re.search(r'release (\S+),', out)
    return f'nvcc {match.group(1)}' if match else 'nvcc'


def _torch_cxx_standard() -> str:
    """The C++ standard ``torch.utils.cpp_extension`` compiles extensions
    with: C++20 from torch 2.13 on (whose headers use C++20 features and
    only warn under C++17), C++17 before. torch exposes no constant for
    it, so its builder's source is read."""
    from torch.utils import cpp_extension
    try:
        source = inspect.getsource(cpp_extension)
    except (OSError, TypeError):  # no sources shipped: assume a new torch
        return 'c++20'
    return 'c++20' if "'-std=c++20'" in source else 'c++17'


def _include_flags(cuda_include: Optional[str], stub: str) -> List[str]:
    """torch's include folders, CUDA's and Python's, as a build of
    ``load_native_ops`` passes them, plus ``stub`` where torch's tree
    lacks the generated CUDA header."""
    from torch.utils import cpp_extension
    torch_includes = cpp_extension.include_paths()
    flags = []
    if not any(
            osp.isfile(osp.join(d, CUDA_CMAKE_MACROS))
            for d in torch_includes):
        path = osp.join(stub, CUDA_CMAKE_MACROS)
        os.makedirs(osp.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            f.write(CUDA_CMAKE_MACROS_STUB)
        flags.append(f'-I{stub}')
    system = torch_includes + ([cuda_include] if cuda_include else [])
    python_include = sysconfig.get_path(
        'include', scheme='nt' if os.name == 'nt' else 'posix_prefix')
    if python_include:
        system.append(python_include)
    for include in system:
        flags += ['-isystem', include]
    return flags


def _compile_unit(command: List[str], source: str, compiler: str,
                  csrc: str, verbose: bool) -> CompileResult:
    if verbose:
        print(' '.join(command), flush=True)
    start = time.monotonic()
    try:
        proc = subprocess.run(command, capture_output=True, text=True)
        output, failed = proc.stdout + proc.stderr, proc.returncode != 0
    except OSError as e:  # the host compiler missing, say
        output, failed = f'error: cannot run {command[0]}: {e}', True
    seconds = time.monotonic() - start
    if verbose and output:
        print(output, end='' if output.endswith('\n') else '\n', flush=True)
    return CompileResult(
        source=source,
        compiler=compiler,
        status='failed' if failed else 'ok',
        seconds=seconds,
        command=command,
        output=output,
        first_error=_first_error(output) if failed else '',
        own_warnings=_own_warnings(output, csrc))


def compile_cuda_sources(archs: Sequence[int] = DEFAULT_CUDA_ARCHS,
                         verbose: bool = False,
                         csrc: Optional[str] = None,
                         keep_going: bool = False,
                         units: Sequence[str] = COMPILE_ONLY_SOURCES,
                         nvcc_flags: Sequence[str] = (),
                         output_dir: Optional[str] = None,
                         cubin: bool = False) -> List[CompileResult]:
    """Compiles the CUDA build's sources to object files, without a GPU.

    The schema file is compiled by the host compiler and the kernel by
    nvcc, each with the flags a CUDA build of :func:`load_native_ops`
    gives it (torch's defines, include folders, C++ standard and nvcc
    flags, and ours, ``-DSFC_WITH_CUDA`` included), into a temporary
    folder that is removed afterwards unless ``output_dir`` is given. The
    kernel is compiled once for every architecture in ``archs``
    (``-gencode arch=compute_XY,code=sm_XY``).

    Args:
        archs (Sequence[int]): Compute capabilities, e.g. ``(80, 90)``.
        verbose (bool): Print each command and the compilers' output.
            Defaults to False.
        csrc (str, optional): Sources folder, laid out as ``ops/csrc``.
            Defaults to the installed one.
        keep_going (bool): Compile every unit even after one failed. By
            default the units after a failure are skipped.
        units (Sequence[str]): Which of ``COMPILE_ONLY_SOURCES`` to
            compile, in that order. Defaults to all of them.
        nvcc_flags (Sequence[str]): More flags for nvcc, e.g.
            ``['-Xptxas=-v']``. Defaults to none.
        output_dir (str, optional): Where the outputs are written and
            kept, each named after its source plus ``.o`` (or ``.cubin``).
            Defaults to a temporary folder, removed afterwards.
        cubin (bool): nvcc writes a cubin (device code alone, which
            ``nvdisasm`` reads) rather than an object file; one
            architecture only. Defaults to False.

    Returns:
        list[CompileResult]: One per unit, in the order of ``units``.

    Raises:
        NvccNotFoundError: If there is no nvcc.
        ValueError: If ``archs`` is empty or holds a non-positive number,
            ``units`` one that is not a compile-only source, or ``cubin``
            is asked for more than one architecture.
    """
    from torch.utils import cpp_extension
    archs = [int(a) for a in archs]
    if not archs or any(a <= 0 for a in archs):
        raise ValueError('archs must be compute capabilities such as 80 '
                         f'or 90, got {archs}')
    unknown = [u for u in units if u not in COMPILE_ONLY_SOURCES]
    if unknown or not units:
        raise ValueError(f'units must be among {COMPILE_ONLY_SOURCES}, '
                         f'got {list(units)}')
    if cubin and len(archs) != 1:
        raise ValueError('a cubin is for one architecture, got archs '
                         f'{archs}')
    csrc = csrc or CSRC
    nvcc = _find_nvcc()
    cuda_home = _cuda_home(nvcc)
    cuda_include = osp.join(cuda_home, 'include') if cuda_home else None
    if cuda_include and not osp.isdir(cuda_include):
        cuda_include = None
    cflags, cuda_cflags, _ = _build_flags(with_cuda=True)
    std = f'-std={_torch_cxx_standard()}'
    # What cpp_extension adds to both compilers for a library it loads,
    # and the C++ ABI torch was built with (older torch passed it too).
    common = [
        f'-DTORCH_EXTENSION_NAME={LIBRARY_NAME}',
        '-DTORCH_API_INCLUDE_EXTENSION_H',
        '-D_GLIBCXX_USE_CXX11_ABI='
        f'{int(torch._C._GLIBCXX_USE_CXX11_ABI)}',
    ]
    gencode = []
    for arch in archs:
        gencode += ['-gencode', f'arch=compute_{arch},code=sm_{arch}']
    # nvcc compiles the architectures one after the other unless told;
    # in parallel the kernel's compile takes ~0.8x as long on 2 cores.
    threads = min(len(archs), os.cpu_count() or 1)
    if threads > 1:
        gencode += ['--threads', str(threads)]
    cxx = cpp_extension.get_cxx_compiler()
    nvcc_name = _nvcc_version(nvcc)
    results = []
    with tempfile.TemporaryDirectory(prefix='sfc_compile_only_') as tmp:
        includes = _include_flags(cuda_include, osp.join(tmp, 'stub'))
        out = output_dir or tmp
        os.makedirs(out, exist_ok=True)
        for source in [s for s in COMPILE_ONLY_SOURCES if s in units]:
            is_cuda = source.endswith('.cu')
            compiler = (f'{nvcc_name}, ' +
                        ' '.join(f'sm_{a}' for a in archs)
                        if is_cuda else f'{cxx}, -DSFC_WITH_CUDA')
            if results and not results[-1].ok and not keep_going:
                results.append(CompileResult(source, compiler, 'skipped'))
                continue
            path = osp.join(csrc, source)
            kind = '.cubin' if is_cuda and cubin else '.o'
            obj = osp.join(out, osp.basename(source) + kind)
            if is_cuda:
                command = ([nvcc] + common + includes +
                           list(cpp_extension.COMMON_NVCC_FLAGS) + gencode +
                           ['-Xcompiler', '-fPIC'] + cuda_cflags + [std] +
                           list(nvcc_flags))
            else:
                command = ([cxx] + common + includes + ['-fPIC', std] +
                           cflags)
            command += ['-cubin' if kind == '.cubin' else '-c', path, '-o',
                        obj]
            results.append(
                _compile_unit(command, source, compiler, csrc, verbose))
    return results
