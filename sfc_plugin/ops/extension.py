"""Builds and loads the native kernels of :mod:`sfc_plugin.ops`.

The C++ (and, where torch has CUDA, CUDA) sources under ``ops/csrc`` are
compiled on first use with :func:`torch.utils.cpp_extension.load`, not at
install: the library must match the exact torch the user runs (its ABI
changes between releases), and an install-time build would have to fight
pip's isolated build environments, which pull a different torch. The build
(about 15 s for the CPU kernel) is cached per torch version, Python version,
CUDA toolkit and CPU instruction set, and is shared by every later process.

Environment:
    ``SFC_PLUGIN_NATIVE_OPS=0``: never build; use the pure-PyTorch
    implementation everywhere.
    ``SFC_PLUGIN_OPS_CACHE``: build cache root (default
    ``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``).

``python -m sfc_plugin.ops`` builds ahead of time and reports the result.
"""
import hashlib
import os
import os.path as osp
import platform
import sys
import warnings
from typing import Optional

import torch

__all__ = ['load_native_ops', 'native_ops_available', 'native_ops_status']

CSRC = osp.join(osp.dirname(osp.abspath(__file__)), 'csrc')
CPU_SOURCES = ('topk_window_match.cpp', 'cpu/topk_window_match_cpu.cpp')
CUDA_SOURCES = ('cuda/topk_window_match_cuda.cu', )
LIBRARY_NAME = 'sfc_plugin_ops'

_state = dict(tried=False, devices=frozenset(), error=None, path=None)


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
    return hashlib.sha1(flags.encode()).hexdigest()[:8]


def _build_directory(with_cuda: bool) -> str:
    root = os.environ.get('SFC_PLUGIN_OPS_CACHE') or os.environ.get(
        'TORCH_EXTENSIONS_DIR') or osp.join(
            osp.expanduser('~'), '.cache', 'torch_extensions')
    cuda = f'cu{torch.version.cuda}' if with_cuda else 'cpu'
    tag = (f'{LIBRARY_NAME}-torch{torch.__version__}-'
           f'py{sys.version_info[0]}{sys.version_info[1]}-{cuda}-'
           f'{_cpu_tag()}')
    path = osp.join(root, tag.replace('+', '_'))
    os.makedirs(path, exist_ok=True)
    return path


def _cuda_buildable() -> bool:
    from torch.utils.cpp_extension import CUDA_HOME
    return (torch.cuda.is_available() and torch.version.cuda is not None
            and CUDA_HOME is not None)


def load_native_ops(verbose: bool = False) -> bool:
    """Builds (once) and loads the native kernels.

    A failed build warns once, naming the cause, and leaves the
    pure-PyTorch implementation in charge; it is not retried in this
    process.

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
    try:
        cpp_extension.load(
            name=LIBRARY_NAME,
            sources=sources,
            extra_cflags=cflags,
            extra_cuda_cflags=['-O3', '-DSFC_WITH_CUDA'],
            extra_ldflags=['-fopenmp'] if os.name != 'nt' else [],
            build_directory=_build_directory(with_cuda),
            is_python_module=False,
            verbose=verbose)
    except Exception as e:  # compiler missing, headers, ...
        _state['error'] = f'{type(e).__name__}: {e}'
        warnings.warn(
            'sfc_plugin: could not build the native topk_window_match '
            f'kernels ({_state["error"].splitlines()[0]}); using the '
            'pure-PyTorch implementation, which is several times slower. '
            'Run `python -m sfc_plugin.ops` for the full build log, or set '
            'SFC_PLUGIN_NATIVE_OPS=0 to choose it silently.')
        return False
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
