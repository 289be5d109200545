"""benchmarks/device_profile.py: what it makes of the profiler's events
(faked for CUDA, which this machine lacks) and of a real CPU run."""
import os.path as osp
import sys
from types import SimpleNamespace

import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(REPO, 'benchmarks'))
from device_profile import device_profile  # noqa: E402

CUDA = torch.autograd.DeviceType.CUDA
CPU = torch.autograd.DeviceType.CPU


def event(name, us=0.0, device_type=CUDA, parent=None):
    """A profiler event: a kernel of ``us`` µs on CUDA, an operator
    holding the host ``us`` µs on the CPU."""
    return SimpleNamespace(
        name=name, device_type=device_type, cpu_parent=parent,
        cpu_time_total=us if device_type == CPU else 0.0,
        time_range=SimpleNamespace(elapsed_us=lambda: us))


def test_kernels_are_summed_by_name_per_unit(monkeypatch):
    """Device events summed by name and divided by the units, the busiest
    first with their share of the busy time; the host's operators counted
    where no operator encloses them, whatever their library."""
    conv = event('aten::conv2d', 40.0, device_type=CPU)
    events = [event('gemm', 300.0), event('bn', 50.0), event('gemm', 300.0),
              conv, event('aten::convolution', 30.0, device_type=CPU,
                          parent=conv),
              event('aten::add', 10.0, device_type=CPU),
              event('cudaLaunchKernel', 5.0, device_type=CPU),
              fused := event('mkldnn::_convolution_pointwise', 100.0,
                             device_type=CPU),
              event('aten::empty', 2.0, device_type=CPU, parent=fused),
              event('sfc::topk_window_match', 60.0, device_type=CPU),
              event('aten::add', 20.0, device_type=CPU),
              event('relu', 125.0), event('relu', 125.0)]
    seen = {}

    class FakeProfile:

        def __init__(self, activities):
            seen['activities'] = activities

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def events(self):
            return events

    monkeypatch.setattr(torch.profiler, 'profile', FakeProfile)
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda device=None: None)
    calls = []
    prof = device_profile(lambda: calls.append(1), 2, 'cuda', top=2)
    assert calls == [1]
    assert torch.profiler.ProfilerActivity.CUDA in seen['activities']
    assert prof['busy_ms'] == pytest.approx(0.45)
    assert prof['kernels'] == [['gemm', 0.3, 1, pytest.approx(600 / 900)],
                               ['relu', 0.125, 1, pytest.approx(250 / 900)]]
    # conv2d, add twice, the fused convolution and the match, over 2
    # units; not what runs inside them, nor the CUDA runtime's calls.
    assert prof['host_ops'] == 2.5
    assert prof['host_op_ms'] == pytest.approx(0.115)
    assert prof['host_op_table'] == [
        ['mkldnn::_convolution_pointwise', 0.05, 0.5],
        ['sfc::topk_window_match', 0.03, 0.5]]  # top=2: the longest
    assert prof['wall_ms'] >= 0


def test_a_cpu_run_counts_the_host_operators():
    x = torch.randn(8, 8)

    def work():
        for _ in range(3):
            (x @ x).relu_().sum()

    prof = device_profile(work, 3, 'cpu')
    assert prof['busy_ms'] is None and prof['kernels'] == []
    assert prof['host_ops'] == 3  # matmul, relu_, sum per unit
    assert [name for name, _, _ in prof['host_op_table']] and all(
        calls == 1 for _, _, calls in prof['host_op_table'])
    assert 0 < prof['host_op_ms'] <= prof['wall_ms']
    assert prof['wall_ms'] > 0
    with pytest.raises(ValueError, match='units must be >= 1, got 0'):
        device_profile(work, 0, 'cpu')


def test_the_kernel_table_has_a_row_per_kernel(capsys):
    from device_profile import print_kernel_table
    print_kernel_table(dict(kernels=[['gemm', 0.3, 1.0, 0.5],
                                     ['relu', 0.125, 2.5, 0.25]]), 'frame')
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ('| kernel | ms/frame | launches/frame | share of '
                        'busy |')
    assert lines[2:] == ['| `gemm` | 0.300 | 1.0 | 50.0% |',
                         '| `relu` | 0.125 | 2.5 | 25.0% |']
