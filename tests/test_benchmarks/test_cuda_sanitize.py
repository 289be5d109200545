"""benchmarks/cuda_sanitize.py: how it drives compute-sanitizer and ncu and
reads their verdicts, with stand-in programs (the tools need a GPU)."""
import json
import os
import os.path as osp
import stat
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(REPO, 'benchmarks'))
import cuda_sanitize  # noqa: E402

# Prints the summary a tool would, after checking how it was called:
# racecheck finds two hazards, the others nothing, initcheck's cases crash.
FAKE_SANITIZER = '''#!{python}
import os, sys
args = sys.argv[1:]
tool = args[args.index('--tool') + 1]
assert args[args.index('--error-exitcode') + 1] == '3', args
assert os.environ['PYTORCH_NO_CUDA_MEMORY_CACHING'] == '1'
assert args[-4].endswith('cuda_sanitize.py'), args
assert args[-3] == '--configs' and args[-1] == '--cases', args
print('cases through', args[-2])
if tool == 'initcheck':
    print('Traceback: RuntimeError: CUDA error', file=sys.stderr)
    sys.exit(1)
if tool == 'racecheck':
    errors = 2
    print('========= RACECHECK SUMMARY: 2 hazards displayed '
          '(1 errors, 1 warnings)')
else:
    errors = 0
    print('========= ERROR SUMMARY: 0 errors')
sys.exit(3 if errors else 0)
'''

FAKE_NCU = '''#!{python}
import sys
assert sys.argv[1:3] == ['--clock-control', 'none'], sys.argv
print('  void topk_window_kernel<Tf32TensorCoreConfig<...>>(...)')
print('    Section: Warp State Statistics')
'''


def install(folder, name, text):
    path = osp.join(folder, name)
    with open(path, 'w') as f:
        f.write(text.format(python=sys.executable))
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return path


@pytest.mark.parametrize('returncode, output, status, errors', [
    (0, '========= ERROR SUMMARY: 0 errors\n', 'ok', 0),
    (3, '= Invalid __shared__ write\n========= ERROR SUMMARY: 1 error\n',
     'errors', 1),
    # The cases failed though the tool saw nothing: not a pass.
    (1, 'SystemExit: no CUDA kernel\n========= ERROR SUMMARY: 0 errors\n',
     'failed', 0),
    (-11, 'Segmentation fault\n', 'failed', None),
    # A child's summary, then the last one counts.
    (3, 'ERROR SUMMARY: 0 errors\nERROR SUMMARY: 4 errors\n', 'errors', 4),
    # Cut at its time limit: what it had found by then.
    (-1, '========= COMPUTE-SANITIZER\n'
     '========= Warning: Race reported between Read access at k+0x10\n'
     '=========     and Write access at k+0x20 [280 hazards]\n'
     '========= Warning: Race reported between Read access at k+0x30\n'
     '(stopped after 45 s)\n', 'errors', 2),
    (-1, '========= COMPUTE-SANITIZER\n(stopped after 45 s)\n', 'failed',
     None),
    # racecheck's own summary, as the H200 printed it (2026-11-27), and
    # with hazards: its warnings (warp-level races) count.
    (0, '========= COMPUTE-SANITIZER\ncuda_sanitize: 112 calls on 14 cases\n'
     '========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, '
     '0 warnings)\n', 'ok', 0),
    (0, '========= RACECHECK SUMMARY: 50 hazards displayed (0 errors, '
     '50 warnings)\n', 'errors', 50),
    (3, '========= RACECHECK SUMMARY: 3 hazards displayed (1 error, '
     '2 warnings)\n', 'errors', 3),
])
def test_verdict(returncode, output, status, errors):
    result = cuda_sanitize.verdict('memcheck', returncode, output)
    assert (result['status'], result['errors']) == (status, errors)
    assert result['last_line'] == output.strip().splitlines()[-1]


def test_each_tool_runs_the_cases_and_is_judged(tmp_path, monkeypatch,
                                                capsys):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    install(str(bin_dir), 'compute-sanitizer', FAKE_SANITIZER)
    install(str(bin_dir), 'ncu', FAKE_NCU)
    monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
    out = tmp_path / 'out'
    status = cuda_sanitize.main(['--out', str(out), '--profile'])
    # initcheck could not run: that outranks racecheck's errors.
    assert status == 2
    results = json.loads((out / 'cuda_sanitize.json').read_text())
    by_tool = {r['tool']: r for r in results}
    assert [r['tool'] for r in results] == list(cuda_sanitize.TOOLS) + [
        'ncu float32', 'ncu bfloat16']
    assert by_tool['memcheck']['status'] == 'ok'
    assert by_tool['synccheck']['status'] == 'ok'
    assert (by_tool['racecheck']['status'],
            by_tool['racecheck']['errors']) == ('errors', 2)
    assert by_tool['initcheck']['status'] == 'failed'
    assert by_tool['ncu float32']['status'] == 'ok'
    assert '--profile-case float32' in (out / 'ncu_float32.txt').read_text()
    assert 'RACECHECK SUMMARY: 2 hazards' in (
        out / 'racecheck.txt').read_text()
    table = capsys.readouterr().out
    assert '| racecheck | errors | 2 | 3 | racecheck.txt |' in table

    # Without the crash, errors alone give 1; nothing found gives 0.
    assert cuda_sanitize.main(['--out', str(out), '--tools', 'memcheck',
                               'racecheck']) == 1
    assert cuda_sanitize.main(['--out', str(out), '--tools',
                               'memcheck']) == 0
    assert 'cases through all' in (out / 'memcheck.txt').read_text()
    # The op's own choices alone, for a slow tool.
    assert cuda_sanitize.main(['--out', str(out), '--tools', 'racecheck',
                               '--configs', 'op']) == 1
    assert 'cases through op' in (out / 'racecheck.txt').read_text()


def test_an_output_that_is_a_file_is_refused(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    install(str(bin_dir), 'compute-sanitizer', FAKE_SANITIZER)
    monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
    (tmp_path / 'file').write_text('')
    assert cuda_sanitize.main(['--out', str(tmp_path / 'file')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'is a file' in err


def test_a_missing_tool_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cuda_sanitize, 'find_program', lambda name: None)
    assert cuda_sanitize.main(['--out', str(tmp_path / 'o')]) == 2
    assert 'compute-sanitizer not found' in capsys.readouterr().err
    assert not (tmp_path / 'o').exists()


@pytest.mark.parametrize('value', ['0', '-1', 'nan', 'inf'])
def test_timeout_is_checked(value, capsys):
    with pytest.raises(SystemExit) as e:
        cuda_sanitize.parse_args(['--timeout', value])
    assert e.value.code == 2
    assert '--timeout must be a positive number' in capsys.readouterr().err


SLOW_SANITIZER = '''#!{python}
import sys, time
print('========= Warning: Race reported between Read access at k+0x10',
      flush=True)
time.sleep(60)
'''


def test_a_tool_cut_at_its_limit_keeps_what_it_found(tmp_path, monkeypatch):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    install(str(bin_dir), 'compute-sanitizer', SLOW_SANITIZER)
    monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
    out = tmp_path / 'out'
    assert cuda_sanitize.main(['--out', str(out), '--tools', 'racecheck',
                               '--timeout', '1']) == 1
    result, = json.loads((out / 'cuda_sanitize.json').read_text())
    assert (result['status'], result['errors'], result['exit_status']) == (
        'errors', 1, -1)
    assert result['last_line'] == '(stopped after 1 s)'
    assert 'Warning: Race reported' in (out / 'racecheck.txt').read_text()
