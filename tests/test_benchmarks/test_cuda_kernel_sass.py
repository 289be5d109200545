"""benchmarks/cuda_kernel_sass.py: the census of a listing (what it takes
for each kernel's scoring loop), and the whole command where nvcc and
nvdisasm exist."""
import os.path as osp
import shutil
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(REPO, 'benchmarks'))
import cuda_kernel_sass  # noqa: E402

TF32 = ('_ZN10sfc_plugin3ops12cuda_kernels18topk_window_kernelINS1_20Tf32'
        'TensorCoreConfigILi4ELi8ELi64ELi32ELi3ELb1EEEffEEvPKT0_S7_PKlllll'
        'llllldPT1_PlSB_SC_Pi')
CUDA_CORES = ('_ZN10sfc_plugin3ops12cuda_kernels18topk_window_kernelINS1_10'
              'TileConfigILi4ELi8ELi64ELi4ELi4ELb1ELi3EEEddEEvPKT0_S7_PKlll'
              'lllllllldPT1_PlSB_SC_Pi')
MERGE = ('_ZN10sfc_plugin3ops12cuda_kernels19merge_groups_kernelIfEEvPKT_P'
         'KlPKilllldPS3_PlSA_SB_')


def listing(functions):
    """An nvdisasm -c listing: {name: [instruction or '.L_x_N:']}."""
    lines = ['\t.headerflags\t@"EF_CUDA_SM90"']
    address = 0
    for name, body in functions.items():
        lines += [f'\t.section\t.text.{name},"ax",@progbits', f'{name}:',
                  f'.text.{name}:']
        for item in body:
            if item.endswith(':'):
                lines.append(item)
            else:
                lines.append(f'        /*{address:04x}*/'
                             f'                   {item} ;')
                address += 16
    return '\n'.join(lines) + '\n'


def tensor_core_kernel():
    # An outer loop (the chunks) around the slice loop, and the softmax's
    # loop with FFMAs of its own.
    slice_loop = (['LDG.E.128.CONSTANT R4, desc[UR4][R2.64]',
                   'STS.128 [R9], R4', 'BAR.SYNC.DEFER_BLOCKING 0x0'] +
                  ['LDSM.16.M88.4 R12, [R10]'] * 6 +
                  ['HMMA.1688.F32.TF32 R20, R12, R16, R20'] * 12 +
                  ['@!P0 IADD3 R1, R1, 0x1, RZ',
                   'BAR.SYNC.DEFER_BLOCKING 0x0', '@P0 BRA `(.L_x_2)'])
    return (['S2R R0, SR_TID.X', '.L_x_1:', 'LDS.64 R2, [R0]', '.L_x_2:'] +
            slice_loop +
            ['STL [R1], R3', '@P1 BRA `(.L_x_1)', '.L_x_3:'] +
            ['FFMA R5, R5, R6, R7'] * 3 +
            ['@P2 BRA `(.L_x_3)', 'EXIT'])


def cuda_core_kernel():
    return (['.L_x_0:'] + ['DFMA R4, R6, R8, R4'] * 8 +
            ['LDS.128 R6, [R1]', '@P0 BRA `(.L_x_0)', '.L_x_1:',
             'DFMA R4, R6, R8, R4', 'MUFU.RCP64H R5, R7',
             'IADD3 R1, R1, 0x1, RZ', '@P1 BRA `(.L_x_1)', 'EXIT'])


PTXAS = f"""ptxas info    : Compiling entry function '{TF32}' for 'sm_90'
ptxas info    : Function properties for {TF32}
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 156 registers, used 1 barriers
ptxas info    : Compile time = 331.136 ms
ptxas info    : Compiling entry function '{CUDA_CORES}' for 'sm_90'
ptxas info    : Function properties for {CUDA_CORES}
    16 bytes stack frame, 12 bytes spill stores, 20 bytes spill loads
ptxas info    : Used 168 registers, used 1 barriers
"""


def test_each_kernel_gets_its_scoring_loop_counted():
    sass = listing({TF32: tensor_core_kernel(), MERGE: ['EXIT'],
                    CUDA_CORES: cuda_core_kernel()})
    rows = cuda_kernel_sass.census(sass, PTXAS)
    # The merge kernel is not a matching kernel.
    assert [r['mangled'] for r in rows] == [TF32, CUDA_CORES]
    tf32, cores = rows
    # The slice loop: not the softmax's FFMAs, nor the chunk loop around
    # it (the same mma and more).
    assert tf32['slice_loop'] == {
        'instructions': 24, 'scoring_opcode': 'HMMA', 'math': 12,
        'shared loads': 6, 'global loads': 1, 'shared stores': 1,
        'local (spills)': 0, 'barriers': 2, 'other': 2}
    assert (tf32['registers'], tf32['spill_stores'],
            tf32['spill_loads']) == (156, 0, 0)
    # CUDA cores in double: the densest DFMA loop, not the second one.
    assert cores['slice_loop']['instructions'] == 10
    assert cores['slice_loop']['math'] == 8
    assert cores['slice_loop']['scoring_opcode'] == 'DFMA'
    assert (cores['registers'], cores['spill_stores'],
            cores['spill_loads']) == (168, 12, 20)
    if shutil.which('c++filt'):
        assert tf32['kernel'] == ('Tf32TensorCoreConfig<4, 8, 64, 32, 3, '
                                  'true>, float')
        assert cores['kernel'] == 'TileConfig<4, 8, 64, 4, 4, true, 3>, double'
    table = cuda_kernel_sass.markdown(rows, 90)
    assert f'| `{tf32["kernel"]}` | 156 | 0/0 | 24 | 12 | 6 | 1 | 1 | 0 | ' \
           '2 | 2 |' in table


def test_a_kernel_without_a_scoring_loop_has_none():
    sass = listing({TF32: ['.L_x_0:', 'IADD3 R1, R1, 0x1, RZ',
                           '@P0 BRA `(.L_x_0)', 'HMMA.1688.F32.TF32 R4, R8, '
                           'R12, R4', 'EXIT']})
    (row, ) = cuda_kernel_sass.census(sass, '')
    assert row['slice_loop'] is None
    assert 'registers' not in row
    assert '| - | - | - |' in cuda_kernel_sass.markdown([row], 80)


def test_without_nvdisasm_one_line_and_exit_status_2(monkeypatch, capsys):
    monkeypatch.setattr(cuda_kernel_sass, 'find_nvdisasm', lambda: None)
    assert cuda_kernel_sass.main([]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'nvdisasm not found' in err


@pytest.mark.parametrize('argv,message', [
    (['--arch', '0'], '--arch must be a compute capability'),
    (['--csrc', '/nonexistent'], 'no cuda/topk_window_match_cuda.cu'),
    (['--arch', 'x'], 'invalid int value'),
    (['--json', '/'], '--json "/" is a folder'),
    (['--json', '{file}/x.json'], '--json folder "'),
])
def test_bad_arguments_are_refused(argv, message, capsys, tmp_path):
    (tmp_path / 'file').write_text('')
    argv = [a.format(file=tmp_path / 'file') for a in argv]
    with pytest.raises(SystemExit) as exc:
        cuda_kernel_sass.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


KERNEL_SOURCE = r"""
namespace sfc_plugin { namespace ops { namespace cuda_kernels {
template <int N> struct TileConfig {};
template <typename Config, typename T, typename A>
__global__ void topk_window_kernel(const T* x, A* y, int n) {
  A s = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s = fma(x[i], x[i + 1], s);
  y[threadIdx.x] = s;
}
template __global__ void topk_window_kernel<TileConfig<4>, float, float>(
    const float*, float*, int);
}}}
"""


@pytest.mark.skipif(
    shutil.which('nvcc') is None or cuda_kernel_sass.find_nvdisasm() is None,
    reason='needs nvcc and nvdisasm (the CUDA toolkit, or the '
    'nvidia-cuda-nvdisasm wheel)')
def test_the_command_on_a_small_kernel(tmp_path, capsys):
    (tmp_path / 'cuda').mkdir()
    (tmp_path / 'cuda' / 'topk_window_match_cuda.cu').write_text(
        KERNEL_SOURCE)
    out = tmp_path / 'sass.json'
    assert cuda_kernel_sass.main(['--arch', '80', '--csrc', str(tmp_path),
                                  '--json', str(out)]) == 0
    assert 'sm_80' in capsys.readouterr().out
    import json
    (row, ) = json.loads(out.read_text())['rows']
    assert row['slice_loop']['scoring_opcode'] == 'FFMA'
    assert row['slice_loop']['math'] >= 1
    assert row['registers'] > 0
