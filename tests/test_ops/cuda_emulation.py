"""The CUDA kernels of ``sfc::topk_window_neighbours`` on the CPU.

``csrc/emulated_topk_window.cpp`` compiles the kernels' header
(``sfc_plugin/ops/csrc/cuda/topk_window_match_kernel.cuh``) with the host
compiler against ``csrc/simt_emulation.h``, which runs every CUDA thread of
a block as a thread of its own, with real barriers. The launch plan is the
CUDA op's own, so the tests reach the frame groups and their merge by
asking for more blocks (``target_blocks``).
"""
import os.path as osp

import pytest
import torch

from sfc_plugin.ops.extension import CSRC

HERE = osp.dirname(osp.abspath(__file__))
_state = {}


def load_emulation() -> None:
    """Builds (once per process, cached on disk by torch) and loads the
    emulated kernels; skips where there is no C++ compiler."""
    if 'error' in _state:
        pytest.skip(_state['error'])
    if _state.get('loaded'):
        return
    from torch.utils import cpp_extension
    if not cpp_extension.shutil.which(cpp_extension.get_cxx_compiler()):
        _state['error'] = 'no C++ compiler to build the CUDA emulation'
        pytest.skip(_state['error'])
    cpp_extension.load(
        name='sfc_cuda_emulation',
        sources=[osp.join(HERE, 'csrc', 'emulated_topk_window.cpp')],
        extra_include_paths=[CSRC, osp.join(HERE, 'csrc')],
        # std::barrier is C++20; the kernels' #pragma unroll is nvcc's.
        extra_cflags=['-O2', '-std=c++20', '-pthread',
                      '-Wno-unknown-pragmas'],
        extra_ldflags=['-pthread'],
        is_python_module=False)
    _state['loaded'] = True


def emulated_neighbours(query, keys, topk, radius, temperature,
                        unrestricted_keys, target_blocks=1, config='',
                        fallback=False, shared_bytes=0):
    """``torch.ops.sfc.topk_window_neighbours`` as the CUDA kernels compute
    it, on batched CPU tensors. ``target_blocks`` 1 keeps every frame in
    one group; a large one splits the frames into groups of one frame.
    ``config`` names a kernel configuration (empty: the CUDA-core
    default); with ``fallback``, as the op treats its own choice: one
    whose blocks do not fit ``shared_bytes`` of shared memory (0: an
    H100's 227 KiB) gives way to the default."""
    load_emulation()
    return torch.ops.sfc_emulation.topk_window_neighbours(
        query, keys, topk, radius, temperature, unrestricted_keys,
        target_blocks, config, fallback, shared_bytes)


def config_shared_bytes(config, stored_topk):
    """Shared memory of one block of ``config`` (float accumulation)."""
    load_emulation()
    return torch.ops.sfc_emulation.config_shared_bytes(config, stored_topk)


def kernel_configs():
    """Names of the kernel's configurations, the op's default first."""
    load_emulation()
    return list(torch.ops.sfc_emulation.kernel_configs())


def planned_groups(tiles, resident, of_chunks):
    """The launch plan's groups of keys before its caps."""
    load_emulation()
    return torch.ops.sfc_emulation.planned_groups(tiles, resident, of_chunks)
