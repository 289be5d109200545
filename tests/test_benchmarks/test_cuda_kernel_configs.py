"""benchmarks/cuda_kernel_configs.py, run on the CUDA kernels' CPU
emulation: what it times, checks and reports (on a GPU it runs the op)."""
import os.path as osp
import sys

import pytest
import torch

from tests.test_ops.cuda_emulation import emulated_neighbours, kernel_configs

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(REPO, 'benchmarks'))
import cuda_kernel_configs  # noqa: E402

SMALL = ['--device', 'cpu', '--height', '6', '--width', '11', '--frames',
         '3', '--channels', '16', '--topk', '5', '--radius', '2.5',
         '--repeats', '1']


def emulated_op(query, keys, topk, radius, temperature, unrestricted,
                config):
    return emulated_neighbours(query, keys, topk, radius, temperature,
                               unrestricted, 1, config)


def test_every_config_is_timed_and_checked(capsys):
    args = cuda_kernel_configs.parse_args(SMALL)
    configs = kernel_configs()
    rows = cuda_kernel_configs.compare(args, torch.device('cpu'), configs,
                                       emulated_op, rate=1e3)
    assert [r['config'] for r in rows] == configs
    assert all(r['ok'] for r in rows), rows
    for r in rows:
        tensor_cores = 'tensorcores' in r['config']
        assert r['features'] == ('bfloat16' if tensor_cores else 'float32')
        assert r['seconds'] > 0 and r['computed_pairs'] > 0
        if '-tf32x3-' in r['config']:
            assert r['check'].startswith('100.00% of indices = CUDA cores, '
                                         'weights within ')
        else:
            assert r['check'] == (
                '100.00% of indices = CUDA cores'
                if tensor_cores else 'same as the CUDA-core default')
    out = capsys.readouterr().out
    assert out.count('| 4x8-keys64-micro4x4-prefetch-min3 |') == 1


def test_a_config_that_disagrees_is_reported(capsys):
    """A configuration whose neighbours differ from the CUDA-core
    default's is marked in its row (the script then exits non-zero): the
    default against itself, the first alternative (tensor cores) with
    its indices reversed."""
    args = cuda_kernel_configs.parse_args(SMALL)
    configs = kernel_configs()
    other = configs[1]

    def wrong_for_one(query, keys, topk, radius, temperature, unrestricted,
                      config):
        weights, indices = emulated_op(query, keys, topk, radius,
                                       temperature, unrestricted, config)
        return (weights, indices.flip(-1)) if config == other else (
            weights, indices)

    rows = cuda_kernel_configs.compare(args, torch.device('cpu'),
                                       configs[:2], wrong_for_one, rate=1e3)
    assert [r['ok'] for r in rows] == [True, False]
    assert rows[0]['check'] == 'same as the CUDA-core default'
    assert rows[1]['check'].endswith('% of indices = CUDA cores')
    assert rows[1]['index_agreement'] < 0.99
    assert f"| {rows[1]['check']} |" in capsys.readouterr().out


def test_tiling_reads_every_configuration_name():
    for config in kernel_configs():
        rows, cols, chunk = cuda_kernel_configs.tiling(config)
        assert f'{rows}x{cols}-keys{chunk}-' in config
    with pytest.raises(ValueError, match='unexpected kernel configuration'):
        cuda_kernel_configs.tiling('4x8')


def test_gpu_check_reads_the_script_rows(monkeypatch):
    """gpu_check's kernel_configs section (CUDA only) turns the scripts'
    JSON rows into its table; here cuda_kernel_configs.py's run is replaced
    by rows that compare() computed on the emulation, one of them
    disagreeing, and cuda_frame_groups.py's by two group counts."""
    import argparse
    import json
    import subprocess

    import gpu_check

    args = cuda_kernel_configs.parse_args(SMALL)
    configs = kernel_configs()
    rows = cuda_kernel_configs.compare(args, torch.device('cpu'), configs,
                                       emulated_op, rate=1e3)
    rows[1].update(ok=False, check="NOT the CUDA-core default's")
    group_rows = [
        dict(channels=16, features=f, groups=g, seconds=s, speedup=1 / s,
             ok=True)
        for f in ('float32', 'bfloat16') for g, s in (('plan', 1.0),
                                                      ('3', 0.5))]
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        groups = cmd[1].endswith('cuda_frame_groups.py')
        with open(cmd[cmd.index('--out') + 1], 'w') as f:
            json.dump(dict(rows=group_rows if groups else rows), f)
        return subprocess.CompletedProcess(cmd, 0 if groups else 1, 'table',
                                           '')

    monkeypatch.setattr(gpu_check.subprocess, 'run', fake_run)
    with pytest.raises(gpu_check.SectionFailure) as failure:
        gpu_check.section_kernel_configs(
            argparse.Namespace(device='cuda', quick=True))
    assert len(calls) == 2 * len(gpu_check.MATCH_SETTINGS)
    # Per setting: the fastest float32 and bfloat16 rows, then every row,
    # then the frame groups per feature type.
    table = failure.value.rows
    per_setting = 2 + len(configs) + 2
    assert len(table) == len(gpu_check.MATCH_SETTINGS) * per_setting
    groups = table[per_setting - 2:per_setting]
    assert groups[0]['figure'].endswith('C=16, float32: frame groups as '
                                        'planned')
    assert groups[1]['note'].startswith('fastest: 3 groups, 500.00 ms = '
                                        '2.00× the plan')
    fastest, per_config = table[:2], table[2:2 + len(configs)]
    passed = [r for r in rows if r['ok'] and r['features'] == 'float32']
    best = min(passed, key=lambda r: r['seconds'])
    assert fastest[0]['figure'].endswith(
        f"C=16, float32: fastest {best['config']} / fp32 floor")
    assert fastest[0]['value'] == best['vs_floor']
    assert rows[1]['config'] not in fastest[0]['figure']  # it failed
    # The first setting's largest C is the goal's figure.
    assert fastest[0]['goal'] == 'match_vs_floor'
    assert 'tensorcores' in fastest[1]['figure'] and not fastest[1]['goal']
    assert per_config[0]['figure'].endswith(f'{configs[0]} (float32)')
    assert per_config[0]['unit'] == 'ms/frame'
    assert 'same as the CUDA-core default' in per_config[0]['note']
    assert "NOT the CUDA-core default's" in per_config[1]['note']
    assert 'disagrees with the CUDA-core default' in str(failure.value)
