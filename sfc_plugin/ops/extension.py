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

``python -m sfc_plugin.ops`` builds ahead of time and reports the result.
"""
import contextlib
import hashlib
import os
import os.path as osp
import platform
import sys
import time
import warnings
from typing import Iterator, List, Optional

import torch

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

__all__ = ['load_native_ops', 'native_ops_available', 'native_ops_status']

CSRC = osp.join(osp.dirname(osp.abspath(__file__)), 'csrc')
CPU_SOURCES = ('topk_window_match.cpp', 'cpu/topk_window_match_cpu.cpp')
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
    cflags = ['-O3']
    if os.name != 'nt':
        cflags += ['-march=native', '-fopenmp']
    if platform.machine() in ('x86_64', 'AMD64'):
        cflags.append('-mprefer-vector-width=512')
    if with_cuda:
        cflags.append('-DSFC_WITH_CUDA')
    cuda_cflags = ['-O3', '-DSFC_WITH_CUDA']
    ldflags = ['-fopenmp'] if os.name != 'nt' else []
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


def _register_fake_kernels() -> None:
    """Shape-only implementations, so that ``torch.compile`` and
    ``torch.export`` trace through the ops without running them."""

    @torch.library.register_fake('sfc::topk_window_neighbours')
    def _(query, keys, topk, radius, temperature, unrestricted_keys=1):
        shape = (keys.shape[0], keys.shape[3], keys.shape[4], topk)
        return (query.new_empty(shape),
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
