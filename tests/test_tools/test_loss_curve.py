"""tools/analysis/loss_curve.py: a table of a run's logs, one line per
mistake."""
import pytest

from sfc_plugin.utils.cli import run_tool

from ..conftest import load_tool


@pytest.fixture()
def tool():
    return load_tool('tools/analysis/loss_curve.py')


def logs(tmp_path, *lines):
    folder = tmp_path / 'work' / '20261127_000000' / 'vis_data'
    folder.mkdir(parents=True)
    (folder / 'scalars.json').write_text('\n'.join(lines) + '\n')
    return tmp_path / 'work'


def test_table_and_curve(tool, tmp_path, capsys):
    work = logs(tmp_path, '{"iter": 1, "loss": 0.5, "target_momentum": 0.99}',
                '{"iter": 2, "loss": 0.3, "target_momentum": 0.995}',
                '{"iter": 2, "lr": 0.1}')
    run_tool(tool.main, 'loss_curve.py',
             [str(work), '--bin', '2', '--png', str(tmp_path / 'c.png')])
    out = capsys.readouterr().out.splitlines()
    assert out[2] == '| 1–2 | 0.4000 | 0.99500 |'
    assert out[3] == f'curve written to {tmp_path / "c.png"}'
    assert (tmp_path / 'c.png').read_bytes().startswith(b'\x89PNG')


@pytest.mark.parametrize('lines, args, message', [
    (['{"iter": 1, "loss": 0.5}', '{"iter": 2, "lo'], [],
     'line 2 is not a JSON record'),
    (['{"iter": 1, "loss": "abc"}'], [], "loss 'abc' at iter 1 is not a "
     'number'),
    (['{"iter": 1, "lr": 0.5}'], [], 'no "loss" records'),
    (['{"iter": 1, "loss": 0.5}'], ['--png', '{tmp}/log/x.png'],
     '--png folder "{tmp}/log" is a file'),
    (['{"iter": 1, "loss": 0.5}'], ['--bin', '0'], '--bin must be >= 1'),
    (['{"iter": 1, "loss": 0.5}'], ['--png', '{tmp}/curve'],
     'must end with .png'),
])
def test_mistakes_are_one_line(tool, tmp_path, capsys, lines, args,
                               message):
    work = logs(tmp_path, *lines)
    (tmp_path / 'log').write_text('not a folder')
    with pytest.raises(SystemExit):
        run_tool(tool.main, 'loss_curve.py',
                 [str(work)] + [a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 or err[0].startswith('usage:'), err
    assert message.format(tmp=tmp_path) in err[-1]
