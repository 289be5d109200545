"""tools/analysis/loss_curve.py: a table of a run's logs, one line per
mistake."""
import os
import warnings

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
    (['{"iter": 1, "loss": "abc"}'], [], "line 1 (iter 1): loss must be a "
     "real number, got 'abc' (str)"),
    (['{"iter": 1, "lr": 0.5}'], [], 'no "loss" records'),
    (['{"iter": 1, "loss": 1, "target_momentum": "x"}'], [],
     "line 1 (iter 1): target_momentum must be a real number, got 'x' "
     '(str)'),
    (['{"iter": 1, "loss": 1' + '0' * 400 + '}'], [],
     'line 1 (iter 1): loss must be a real number within float range, got '
     'an integer of 401 digits'),
    (['{"iter": 1, "loss": 1' + '0' * 5000 + '}'], [],
     'line 1 holds an integer of 5001 digits: no logged value'),
    (['{"iter": 1, "loss": 0.5}', '[' * 100000], [],
     'line 2 nests deeper than a log record does'),
    (['{"iter": 1e3, "loss": 1}'], [],
     'iter 1000.0 is not an iteration (an integer in [1, 2**53])'),
    (['{"iter": 0, "loss": 1}'], [], 'iter 0 is not an iteration'),
    (['{"iter": 9007199254740993, "loss": 1}'], [],
     'iter 9007199254740993 is not an iteration'),
    (['{"iter": 1, "loss": 1e308}', '{"iter": 2, "loss": -1e308}'],
     ['--png', '{tmp}/c.png'], '--png: loss spans -1e+308 to 1e+308, beyond '
     'the +-1e+300 a curve can be drawn for'),
    (['{"iter": 1, "loss": 1e308}'], ['--png', '{tmp}/c.png'],
     '--png: loss spans 1e+308 to 1e+308, beyond the +-1e+300'),
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
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 or err[0].startswith('usage:'), err
    assert message.format(tmp=tmp_path) in err[-1]
    # Refused before any of the table is printed.
    assert captured.out == ''


def test_a_diverged_run_is_tabled_and_drawn(tool, tmp_path, capsys):
    """Infinities and NaN (mmengine logs them as Infinity / NaN) and values
    near the float limit: means without overflow, gaps in the curve."""
    work = logs(tmp_path, '{"iter": 1, "loss": 1e308}',
                '{"iter": 2, "loss": 1e308, "target_momentum": 0.99}',
                '{"iter": 9, "loss": 1.7976931348623157e308}',
                '{"iter": 10, "loss": 1.7976931348623157e308}',
                '{"iter": 11, "loss": 1.7976931348623157e308}',
                '{"iter": 3, "loss": 1.0}', '{"iter": 4, "loss": Infinity}',
                '{"iter": 5, "loss": -Infinity}', '{"iter": 6, "loss": NaN}',
                '{"iter": 7, "loss": 0.25}')
    run_tool(tool.main, 'loss_curve.py', [str(work), '--bin', '2'])
    captured = capsys.readouterr()
    assert captured.out.splitlines()[2:] == [
        '| 1–2 | 1.0000e+308 | 0.99000 |', '| 3–4 | inf | nan |',
        '| 5–6 | nan | nan |', '| 7–7 | 0.2500 | nan |',
        '| 9–10 | 1.7977e+308 | nan |', '| 11–11 | 1.7977e+308 | nan |']
    scalars = work / '20261127_000000' / 'vis_data' / 'scalars.json'
    scalars.write_text(scalars.read_text().replace('1e308', '1e299').replace(
        '1.7976931348623157e308', '1'))
    with warnings.catch_warnings():
        # matplotlib's overflow in tick placement is a RuntimeWarning.
        warnings.simplefilter('error', RuntimeWarning)
        run_tool(tool.main, 'loss_curve.py',
                 [str(work), '--bin', '2', '--png', str(tmp_path / 'c.png')])
    captured = capsys.readouterr()
    assert captured.out.splitlines()[2] == '| 1–2 | 1.0000e+299 | 0.99000 |'
    assert (tmp_path / 'c.png').read_bytes().startswith(b'\x89PNG')


def test_bin_mean_near_the_float_limit(tool):
    """fsum's partial sums of three maximal values overflow even after the
    division: the mean is still the value."""
    import math
    big = 1.7976931348623157e308
    assert tool.bin_mean([big] * 3) == big
    assert tool.bin_mean([big, -big, 1.0]) == 1.0 / 3
    assert math.isnan(tool.bin_mean([math.inf, -math.inf]))
    assert tool.bin_mean([math.inf, 1.0]) == math.inf


def test_a_byte_order_mark_is_no_part_of_the_first_record(tool, tmp_path,
                                                          capsys):
    work = logs(tmp_path, '{"iter": 1, "loss": 0.5}')
    path = next(work.glob('*/vis_data/scalars.json'))
    path.write_bytes(b'\xef\xbb\xbf' + path.read_bytes())
    run_tool(tool.main, 'loss_curve.py', [str(work), '--bin', '1'])
    assert '| 1–1 | 0.5000 | nan |' in capsys.readouterr().out


def test_a_fifo_is_refused_not_read(tool, tmp_path, capsys):
    """Opening a FIFO for reading waits for a writer: forever."""
    folder = tmp_path / 'work' / '20261127_000000' / 'vis_data'
    folder.mkdir(parents=True)
    os.mkfifo(folder / 'scalars.json')
    with pytest.raises(SystemExit, match='1'):
        run_tool(tool.main, 'loss_curve.py', [str(tmp_path / 'work')])
    assert capsys.readouterr().err.strip() == (
        f'loss_curve.py: error: "{folder / "scalars.json"}" is not a regular '
        'file')
