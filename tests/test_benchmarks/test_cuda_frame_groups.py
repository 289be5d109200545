"""benchmarks/cuda_frame_groups.py on the CPU kernel (which has no frame
groups: every count gives the plan's neighbours), and gpu_check's rows."""
import os
import os.path as osp
import sys

import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(REPO, 'benchmarks'))
import cuda_frame_groups  # noqa: E402
import gpu_check  # noqa: E402

from tests.test_ops.test_topk_window_match import needs_native  # noqa: E402

SMALL = ['--device', 'cpu', '--height', '6', '--width', '11', '--frames',
         '3', '--channels', '16', '--topk', '5', '--radius', '2.5',
         '--repeats', '1', '--groups', '1', '3']


def test_every_group_count_is_timed_and_checked(monkeypatch, capsys):
    needs_native('cpu')
    monkeypatch.setenv(cuda_frame_groups.VARIABLE, '7')
    monkeypatch.delenv(cuda_frame_groups.GROUP_BY, raising=False)
    args = cuda_frame_groups.parse_args(SMALL)
    rows = cuda_frame_groups.compare(args, torch.device('cpu'))
    assert [(r['features'], r['by'], r['groups']) for r in rows] == [
        (f, by, g) for f in ('float32', 'bfloat16')
        for by in ('frames', 'chunks') for g in ('plan', '1', '3')]
    assert all(r['ok'] and r['seconds'] > 0 for r in rows)
    # The caller's setting comes back, and the unset one stays unset.
    assert os.environ[cuda_frame_groups.VARIABLE] == '7'
    assert cuda_frame_groups.GROUP_BY not in os.environ
    out = capsys.readouterr().out
    assert '| bfloat16 | frames | 3 |' in out
    assert '| bfloat16 | chunks | plan |' in out

    table = gpu_check.frame_group_rows('SFC k15 r15', rows)
    assert [r['figure'] for r in table] == [
        'SFC k15 r15, C=16, float32: frame groups as planned',
        'SFC k15 r15, C=16, bfloat16: frame groups as planned']
    assert table[0]['unit'] == 'ms/frame'
    assert 'the plan; 1: ' in table[0]['note']
    assert ', 3: ' in table[0]['note']
    assert ', chunks plan: ' in table[0]['note']
    assert ', chunks 3: ' in table[0]['note']


def test_group_by_one_kind(monkeypatch):
    needs_native('cpu')
    monkeypatch.delenv(cuda_frame_groups.GROUP_BY, raising=False)
    args = cuda_frame_groups.parse_args(SMALL + ['--group-by', 'chunks'])
    rows = cuda_frame_groups.compare(args, torch.device('cpu'))
    # The baseline is the op's own plan (of frames), not a row of its own.
    assert [(r['by'], r['groups']) for r in rows[:3]] == [
        ('chunks', 'plan'), ('chunks', '1'), ('chunks', '3')]


@pytest.mark.parametrize('argv, message', [
    (['--groups', '0'], '--groups must be from 1 to 64, got 0'),
    (['--groups', '2', '65'], '--groups must be from 1 to 64, got 65'),
    (['--repeats', '0'], '--repeats must be at least 1'),
    (['--group-by', 'keys'], "--group-by: invalid choice: 'keys'"),
])
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        cuda_frame_groups.parse_args(argv)
    assert message in capsys.readouterr().err
