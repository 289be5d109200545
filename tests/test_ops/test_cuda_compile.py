"""The CUDA sources compile with nvcc, without a GPU (issue 12, item 4).

``python -m sfc_plugin.ops --compile-only cuda`` compiles the op's schema
file and the CUDA kernel for sm_80 and sm_90 against the installed torch's
headers; where nvcc exists, CI does so on every run. A broken source must
fail the command with the compiler's first error, naming the file.
"""
import re
import shutil
import subprocess

import pytest

from sfc_plugin.ops import __main__ as ops_main
from sfc_plugin.ops import extension

needs_nvcc = pytest.mark.skipif(
    shutil.which('nvcc') is None,
    reason='nvcc not on PATH: the CUDA sources are compiled only where the '
    'CUDA toolkit is installed')


@needs_nvcc
def test_compile_only_cuda_compiles_every_unit(python, subprocess_env):
    proc = subprocess.run(
        [python, '-m', 'sfc_plugin.ops', '--compile-only', 'cuda'],
        capture_output=True, text=True, timeout=900, env=subprocess_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert re.fullmatch(
        r'compiled topk_window_match\.cpp \(.+, -DSFC_WITH_CUDA\) in '
        r'\d+\.\d s', lines[0]), proc.stdout
    assert re.fullmatch(
        r'compiled cuda/topk_window_match_cuda\.cu \(nvcc [\d.]+, sm_80 '
        r'sm_90\) in \d+\.\d s', lines[1]), proc.stdout
    # Warnings about our own files are failures to fix, like errors.
    assert 'warning' not in proc.stdout


def broken_copy(tmp_path, source, old, new):
    """A copy of the sources with ``old`` replaced by ``new`` in one file;
    returns the copy's folder and the number of the line changed."""
    csrc = tmp_path / 'csrc'
    shutil.copytree(extension.CSRC, csrc)
    path = csrc / source
    text = path.read_text()
    assert text.count(old) == 1
    path.write_text(text.replace(old, new))
    return csrc, text[:text.index(old)].count('\n') + 1


@needs_nvcc
def test_a_broken_kernel_fails_with_the_first_error(tmp_path, monkeypatch,
                                                    capsys):
    """A missing semicolon in the kernel: exit status 1, and nvcc's first
    error (file, line and the offending source) rather than the whole log
    and the errors that follow from the first."""
    csrc, line = broken_copy(tmp_path, 'cuda/topk_window_match_cuda.cu',
                             'int compute_major;',
                             'int compute_major')
    monkeypatch.setattr(extension, 'CSRC', str(csrc))
    assert ops_main.main(['--compile-only', 'cuda']) == 1
    out = capsys.readouterr().out
    assert re.search(r'^compiled topk_window_match\.cpp ', out, re.M), out
    failed = out[out.index('FAILED'):].splitlines()
    assert failed[0].startswith('FAILED cuda/topk_window_match_cuda.cu ')
    # nvcc reports the error on the next declaration, after a blank line.
    assert re.fullmatch(
        rf'.*topk_window_match_cuda\.cu\({line + 2}\): error: .*',
        failed[1]), out
    assert 'template <typename... Params>' in failed[2]
    assert 'undefined' not in out  # the follow-up errors are left out


@needs_nvcc
def test_a_broken_schema_file_stops_before_the_kernel(tmp_path):
    csrc, line = broken_copy(tmp_path, 'topk_window_match.cpp',
                             'topk = std::min(topk, num_keys(keys));',
                             'topk = std::min(topk, num_keys(keys))')
    schema, kernel = extension.compile_cuda_sources(csrc=str(csrc))
    assert schema.status == 'failed' and kernel.status == 'skipped'
    assert re.match(rf'.*topk_window_match\.cpp:{line}:\d+: error: ',
                    schema.first_error), schema.first_error
    assert len(schema.first_error.splitlines()) <= 4
    assert schema.own_warnings == []


def test_no_nvcc_is_one_line_and_exit_status_2(monkeypatch, capsys,
                                               tmp_path):
    monkeypatch.setenv('PATH', str(tmp_path))
    monkeypatch.delenv('CUDA_HOME', raising=False)
    monkeypatch.delenv('CUDA_PATH', raising=False)
    assert ops_main.main(['--compile-only', 'cuda']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('sfc_plugin.ops: nvcc not found') and \
        '\n' not in err


def test_bad_architectures_are_refused(capsys):
    with pytest.raises(ValueError, match='compute capabilities'):
        extension.compile_cuda_sources(archs=[])
    assert ops_main.main(['--compile-only', 'cuda', '--arch', '0']) == 2


def test_bad_units_and_a_cubin_for_two_archs_are_refused():
    with pytest.raises(ValueError, match='units must be among'):
        extension.compile_cuda_sources(units=['cuda/other.cu'])
    with pytest.raises(ValueError, match='units must be among'):
        extension.compile_cuda_sources(units=[])
    with pytest.raises(ValueError, match='a cubin is for one architecture'):
        extension.compile_cuda_sources(archs=(80, 90), cubin=True)
