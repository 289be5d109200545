"""export/to_trt.py: everything that can be checked without TensorRT is
checked before it is needed; without it, one clear message."""
import importlib.util
import os
import re
import subprocess

import pytest
import torch

from sfc_plugin.deploy import PropagationStep, export_propagation_step

from ..conftest import load_tool

HAS_TRT = importlib.util.find_spec('tensorrt') is not None


@pytest.fixture(scope='module')
def step_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp('trt') / 'step.onnx'
    return str(export_propagation_step(PropagationStep(4, 2.0, 0.1,
                                                       form='decomposed'),
                                       str(path)))


def run(repo, python, env, *args):
    return subprocess.run([python, str(repo / 'export' / 'to_trt.py'), *args],
                          env=env, capture_output=True, text=True)


GOOD = ['--shape', 'query=1x8x4x4:1x8x6x7:2x8x9x9',
        '--shape', 'keys=1x2x8x4x4:1x3x8x6x7:2x4x8x9x9',
        '--shape', 'key_labels=1x2x2x4x4:1x3x2x6x7:2x4x3x9x9']


@pytest.mark.skipif(HAS_TRT and torch.cuda.is_available(),
                    reason='TensorRT and a GPU are present')
def test_without_tensorrt_one_clear_message(repo, python, subprocess_env,
                                           step_onnx, tmp_path):
    proc = run(repo, python, subprocess_env, step_onnx, *GOOD, '--out-dir',
               str(tmp_path))
    assert proc.returncode != 0
    expected = ('TensorRT is not installed' if not HAS_TRT else
                'no CUDA GPU is visible')
    assert expected in proc.stderr and 'nothing was built' in (
        proc.stderr.lower())
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize('shapes,match', [
    (['--shape', 'query=1x8x4x4:1x8x9x9:2x8x6x7'] + GOOD[2:],
     'min <= opt <= max'),
    (['--shape', 'query=1x8x4x4:1x8x6x7'] + GOOD[2:], 'NAME=MIN:OPT:MAX'),
    (['--shape', 'query=1x8x4:1x8x6:2x8x9'] + GOOD[2:], 'does not fit'),
    (['--shape', 'query=1x5x4x4:1x5x6x7:2x5x9x9'] + GOOD[2:], 'does not fit'),
    (GOOD[:4], 'has dynamic dimensions'),
    (GOOD + ['--shape', 'images=1x3x8x8:1x3x8x8:1x3x8x8'], 'no input'),
])
def test_bad_profiles_fail_before_tensorrt(repo, python, subprocess_env,
                                           step_onnx, shapes, match):
    proc = run(repo, python, subprocess_env, step_onnx, *shapes)
    assert proc.returncode != 0 and match in proc.stderr, proc.stderr


@pytest.mark.parametrize('option, value, match', [
    ('--workspace', 'nan', r'--workspace must be in \(0, 1024\] GiB, got nan'),
    ('--workspace', '0', r'--workspace must be in \(0, 1024\] GiB, got 0'),
    ('--workspace', '-1', r'--workspace must be in'),
    ('--workspace', '1e30', r'--workspace must be in'),
    ('--atol', 'nan', r'--atol must be a finite number >= 0, got nan'),
    ('--atol', '-0.5', r'--atol must be a finite number >= 0'),
])
def test_bad_numbers_fail_before_tensorrt(repo, python, subprocess_env,
                                          step_onnx, tmp_path, option, value,
                                          match):
    proc = run(repo, python, subprocess_env, step_onnx, *GOOD, '--out-dir',
               str(tmp_path), option, value)
    assert proc.returncode == 2 and re.search(match, proc.stderr), proc.stderr
    assert 'Traceback' not in proc.stderr and not list(tmp_path.iterdir())


def test_not_an_onnx_file(repo, python, subprocess_env, tmp_path):
    bogus = tmp_path / 'model.onnx'
    bogus.write_bytes(b'not onnx')
    proc = run(repo, python, subprocess_env, str(bogus), *GOOD)
    assert proc.returncode != 0 and 'cannot read' in proc.stderr
    missing = run(repo, python, subprocess_env, str(tmp_path / 'no.onnx'))
    assert 'not found' in missing.stderr
    # An empty file parses as an empty model: named, no IndexError.
    bogus.write_bytes(b'')
    proc = run(repo, python, subprocess_env, str(bogus), *GOOD)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f'to_trt.py: error: "{bogus}" holds no graph with inputs (an empty '
        'file, or not a model of export/to_onnx.py)')


@pytest.mark.parametrize('cache, match', [
    ('{onnx}', '--timing-cache "{onnx}" is the ONNX file'),
    ('{out}/step.engine', 'is the engine'),
    ('{file}/timing.cache', '--timing-cache folder "{file}" is a file'),
    ('{tmp}', 'is a folder'),
    ('', '--timing-cache is empty'),
])
def test_timing_cache_is_checked_before_tensorrt(repo, step_onnx, tmp_path,
                                                 capsys, cache, match):
    """The cache is read and rewritten by the build: never an input."""
    from sfc_plugin.utils.cli import run_tool
    tool = load_tool('export/to_trt.py')
    names = dict(onnx=step_onnx, out=tmp_path / 'out', tmp=tmp_path,
                 file=tmp_path / 'a_file')
    (tmp_path / 'a_file').write_text('x')
    before = open(step_onnx, 'rb').read()
    with pytest.raises(SystemExit, match='1'):
        run_tool(tool.main, 'to_trt.py', [
            step_onnx, *GOOD, '--out-dir', str(tmp_path / 'out'),
            '--timing-cache', cache.format(**names)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and match.format(**names) in lines[0], lines
    assert open(step_onnx, 'rb').read() == before


NAME_RULE = ('give a plain file name (no folder, not starting with a dot); '
             'the engine goes in --out-dir')


@pytest.mark.parametrize('args, message', [
    (['--shape', 'query=1x8x4x4:1x8x6x7:2x8x9x9'],
     '--shape "query=1x8x4x4:1x8x6x7:2x8x9x9": "query" is given twice'),
    (['--shape', f'images=1x8x4x4:1x8x6x7:2x8x9x{2**31}'],
     f'--shape "images=1x8x4x4:1x8x6x7:2x8x9x{2**31}": dimensions must be '
     "<= 2147483647 (TensorRT's limit)"),
    (['--out-dir', ''], '--out-dir is empty: give a path'),
    (['--out-dir', '  '], '--out-dir is empty: give a path'),
    (['--name', 'fc/'], f'--name "fc/": {NAME_RULE}'),
    (['--name', '../fc'], f'--name "../fc": {NAME_RULE}'),
    (['--name', '.hidden'], f'--name ".hidden": {NAME_RULE}'),
    (['--name', ''], f'--name "": {NAME_RULE}'),
])
def test_bad_arguments_are_one_line_before_tensorrt(step_onnx, tmp_path,
                                                    capsys, args, message):
    from sfc_plugin.utils.cli import run_tool
    tool = load_tool('export/to_trt.py')
    with pytest.raises(SystemExit, match='1'):
        run_tool(tool.main, 'to_trt.py', [
            step_onnx, *GOOD, '--out-dir', str(tmp_path / 'out'), *args])
    assert capsys.readouterr().err.strip() == f'to_trt.py: error: {message}'
    assert not list(tmp_path.iterdir())


def test_a_folder_is_not_an_onnx_file(tmp_path, capsys):
    from sfc_plugin.utils.cli import run_tool
    tool = load_tool('export/to_trt.py')
    (tmp_path / 'model.onnx').mkdir()
    with pytest.raises(SystemExit, match='1'):
        run_tool(tool.main, 'to_trt.py', [str(tmp_path / 'model.onnx'),
                                          *GOOD])
    assert capsys.readouterr().err.strip() == (
        f'to_trt.py: error: "{tmp_path / "model.onnx"}" is a folder, not an '
        'ONNX file')


def test_engine_report_never_replaces_the_onnx_report(repo, step_onnx,
                                                     capsys):
    """--out-dir in the ONNX's folder, default name: the engine's report
    would be the ONNX's <stem>.json, which deployment reads."""
    from sfc_plugin.utils.cli import run_tool
    tool = load_tool('export/to_trt.py')
    folder = os.path.dirname(step_onnx)
    before = sorted(os.listdir(folder))
    with pytest.raises(SystemExit, match='1'):
        run_tool(tool.main, 'to_trt.py',
                 [step_onnx, *GOOD, '--out-dir', folder])
    lines = capsys.readouterr().err.strip().splitlines()
    report = os.path.join(folder, 'step.json')
    assert lines == [
        f'to_trt.py: error: Output "{report}" is the ONNX file\'s export '
        f'report "{report}": inputs are never written, moved or deleted; '
        'choose another output']
    assert sorted(os.listdir(folder)) == before


@pytest.mark.parametrize('case, match', [
    # The ONNX through a link: its real report is protected too.
    ('link', 'Output "{m}/a.json" is the ONNX file\'s export report (the '
     'link resolved)'),
    # Another export's report in the folder (b.json beside b.onnx).
    ('other', 'Output "{m}/b.json" is the export report of "{m}/b.onnx"'),
    ('cache-report', '--timing-cache "{m}/b.json" is the export report of '
     '"{m}/b.onnx"'),
    ('cache-failure', '--timing-cache "{out}/a.failed.json" is the failure '
     'report'),
    ('cache-model', '--timing-cache "{m}/b.onnx" is named like a model'),
])
def test_no_output_replaces_an_export(repo, step_onnx, tmp_path, capsys,
                                      case, match):
    """Whatever the names, links and folders, neither the engine, its
    reports nor the timing cache lands on an export or its report."""
    import shutil

    from sfc_plugin.utils.cli import run_tool
    tool = load_tool('export/to_trt.py')
    m, out, links = tmp_path / 'm', tmp_path / 'out', tmp_path / 'links'
    for folder in (m, out, links):
        folder.mkdir()
    for name in ('a', 'b'):
        shutil.copy(step_onnx, m / f'{name}.onnx')
        (m / f'{name}.json').write_text('{}')
    (links / 'link.onnx').symlink_to(m / 'a.onnx')
    args = {
        'link': [str(links / 'link.onnx'), '--out-dir', str(m), '--name',
                 'a'],
        'other': [str(m / 'a.onnx'), '--out-dir', str(m), '--name', 'b'],
        'cache-report': [str(m / 'a.onnx'), '--out-dir', str(out),
                         '--timing-cache', str(m / 'b.json')],
        'cache-failure': [str(m / 'a.onnx'), '--out-dir', str(out),
                          '--timing-cache', str(out / 'a.failed.json')],
        'cache-model': [str(m / 'a.onnx'), '--out-dir', str(out),
                        '--timing-cache', str(m / 'b.onnx')],
    }[case]
    before = {p.name: p.read_bytes() for p in m.iterdir()}
    with pytest.raises(SystemExit, match='1'):
        run_tool(tool.main, 'to_trt.py', args[:1] + GOOD + args[1:])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and match.format(m=m, out=out) in lines[0], lines
    assert {p.name: p.read_bytes() for p in m.iterdir()} == before
    assert not list(out.iterdir())


@pytest.mark.skipif(not (HAS_TRT and torch.cuda.is_available()),
                    reason='needs TensorRT and a CUDA GPU')
def test_builds_and_checks_an_engine(repo, python, subprocess_env, step_onnx,
                                     tmp_path):
    proc = run(repo, python, subprocess_env, step_onnx, *GOOD, '--out-dir',
               str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / 'step.engine').is_file()
    assert '"passed": true' in (tmp_path / 'step.json').read_text()
