"""benchmarks/gpu_check.py stopped from outside (timeout, a batch system)."""
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
GPU_CHECK = osp.join(REPO, 'benchmarks', 'gpu_check.py')


def processes_mentioning(text: str):
    """Pids of live processes whose command line holds ``text``."""
    pids = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                if text.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not osp.isdir('/proc'), reason='needs /proc (Linux)')
def test_sigterm_reports_what_was_measured_and_ends_the_section(tmp_path):
    out = tmp_path / 'gc'
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    proc = subprocess.Popen(
        [sys.executable, GPU_CHECK, '--device', 'cpu', '--quick',
         '--sections', 'track', '--out', str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=REPO, env=env)
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith('gpu_check: track ...'):
                break
        else:
            pytest.fail('the track section never started:\n' +
                        ''.join(seen))
        time.sleep(2)  # inside the section's child by now
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, rest
    report = json.loads((out / 'gpu_check.json').read_text())
    assert report['sections']['env']['status'] in ('ok', 'failed')
    track = report['sections']['track']
    assert track['status'] == 'failed'
    assert 'interrupted by signal 15' in track['error']
    assert 'Failed sections: track.' in (out / 'gpu_check.md').read_text()
    # The section ran in a session of its own: it must not outlive the run.
    assert not processes_mentioning(str(out / 'logs' / 'track.json'))


def test_encoder_rows_time_each_config_in_fp32_and_bf16():
    """The track section's encoder timings as the tracker runs them (on
    CUDA only, with fp16 there too), here on CPU at the quick size: a row
    and a detail per config and precision, and the reduced precision's
    copy with separate convolutions and ReLUs besides."""
    import argparse
    sys.path.insert(0, osp.dirname(GPU_CHECK))
    import gpu_check
    details = {}
    rows = gpu_check.encoder_rows(
        argparse.Namespace(device='cpu', quick=True), details)
    assert [r['figure'] for r in rows] == [
        f'encoder {config} {dtype} (as tracked)'
        for config in ('fc_davis.py', 'sfc_davis.py')
        for dtype in ('fp32', 'bf16')]
    assert all(r['value'] > 0 and r['unit'] == 'ms/frame' for r in rows)
    # bf16 as tracked (fused on the CPU), fused, and as separate ops.
    assert sorted(details) == sorted(
        [f'encoder {config} {dtype}' for config in ('fc_davis.py',
                                                    'sfc_davis.py')
         for dtype in ('fp32', 'bf16', 'bf16 fused', 'bf16 separate ops')])
    fc_bf16, sfc_bf16 = rows[1]['note'], rows[3]['note']
    assert '13 convolutions fused with their ReLU (0 left to separate ops)' \
        in fc_bf16 and '× over separate ops' in fc_bf16
    assert '53 convolutions fused' in sfc_bf16
    assert 'fused' not in rows[0]['note']
    assert all('; first call ' in r['note'] for r in rows)


def test_track_runs_compare_cuda_cores_on_cuda_only():
    """The track section's tools/track.py runs: on CUDA the defaults
    (tensor cores) for every precision, SFC fp32 and bf16 once more on
    CUDA cores, SFC bf16 without cuDNN's search, with cuDNN's fused
    convolutions, and with those and CUDA graphs; on CPU no fp16 and none
    of those. The goal's runs (SFC without the
    overlay) come first, fp32 first, so a section cut short has them."""
    sys.path.insert(0, osp.dirname(GPU_CHECK))
    import gpu_check
    TrackRun = gpu_check.TrackRun
    cuda = gpu_check.track_runs('cuda')
    cpu = gpu_check.track_runs('cpu')
    assert len(cuda) == len(set(cuda)) == 13
    assert [r for r in cuda if r.cuda_cores] == [
        TrackRun('sfc_davis.py', False, 'fp32', True),
        TrackRun('sfc_davis.py', False, 'bf16', True)]
    assert [r for r in cuda if not r.cudnn_search] == [
        TrackRun('sfc_davis.py', False, 'bf16', False, False)]
    assert [r for r in cuda if r.cudnn_fusion] == [
        TrackRun('sfc_davis.py', False, 'bf16', False, cudnn_fusion=True),
        TrackRun('sfc_davis.py', False, 'bf16', False, cuda_graphs=True,
                 cudnn_fusion=True)]
    assert cpu == [r for r in cuda if not r.cuda_cores and r.cudnn_search
                   and not r.cuda_graphs and not r.cudnn_fusion
                   and r.precision != 'fp16']
    for runs in (cuda, cpu):
        goal = [r[:2] == ('sfc_davis.py', False) for r in runs]
        assert goal == sorted(goal, reverse=True)
        assert runs[0] == TrackRun('sfc_davis.py', False, 'fp32', False)


def test_a_track_run_without_cudnn_search(tmp_path, capsys):
    """The run without cuDNN's search gives tools/track.py the config
    override (here on CPU, where the flag changes nothing but is taken),
    and says so in its row."""
    import argparse
    sys.path.insert(0, osp.dirname(GPU_CHECK))
    import gpu_check
    args = argparse.Namespace(device='cpu', quick=True, track_frames=4)
    frames, first, _ = gpu_check.track_source(args, str(tmp_path))
    details, errors = {}, []
    run = gpu_check.TrackRun('fc_davis.py', False, 'fp32', False, False)
    result = gpu_check.track_row(args, str(tmp_path), frames, first, {}, run,
                                 details, errors)
    assert errors == []
    label = 'fc_davis.py no cuDNN search without overlay'
    assert result['figure'] == f'track.py {label}'
    assert result['value'] > 0
    assert details[label]['complete'] is True
    command = capsys.readouterr().out.splitlines()[0]
    assert command.endswith(
        '--no-overlay --cfg-options env_cfg.cudnn_benchmark=False')


def test_sections_build_before_what_runs_the_kernels():
    sys.path.insert(0, osp.dirname(GPU_CHECK))
    import gpu_check
    assert gpu_check.ordered_sections(['track']) == ['env', 'build', 'track']
    assert gpu_check.ordered_sections(['track', 'build', 'env']) == [
        'env', 'build', 'track']
    assert gpu_check.ordered_sections(['train']) == ['env', 'train']
    assert gpu_check.ordered_sections(['env']) == ['env']


@pytest.mark.skipif(not osp.isdir('/proc'), reason='needs /proc (Linux)')
def test_a_section_that_dies_keeps_the_figures_it_saved(tmp_path):
    """The track section saves each run's row as it comes; killed after
    its first (as a timeout kills it), the section is failed with that
    row and the reason, not empty, and the temporary files the killed
    child could not remove (its video, the runs' outputs) are gone."""
    import argparse
    import tempfile
    import threading

    def scratch_folders():
        return {n for n in os.listdir(tempfile.gettempdir())
                if n.startswith('gpu_check_')}

    before = scratch_folders()
    sys.path.insert(0, osp.dirname(GPU_CHECK))
    import gpu_check
    logs = tmp_path / 'logs'
    logs.mkdir()
    args = argparse.Namespace(device='cpu', quick=True, track_frames=4)
    env = gpu_check.child_env(gpu_check.site_folder(str(tmp_path / 'none')))
    results = []
    thread = threading.Thread(target=lambda: results.append(
        gpu_check.run_section('track', args, env, str(logs), 600)))
    thread.start()
    partial = logs / 'track.json.partial'
    deadline = time.monotonic() + 300
    while not partial.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert partial.exists(), 'no figure saved in 300 s'
    for pid in processes_mentioning(str(logs / 'track.json')):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    thread.join(120)
    assert not thread.is_alive()
    result, = results
    assert result['status'] == 'failed'
    assert result['error'].startswith('the child died (-9)')
    figures = [r['figure'] for r in result['rows']]
    assert figures[0] == 'video'
    assert figures[1] == 'track.py sfc_davis.py without overlay'
    assert result['rows'][1]['value'] > 0
    assert 'sfc_davis.py without overlay' in result['details']
    assert scratch_folders() == before


def test_the_time_limit_skips_what_cannot_fit(tmp_path):
    """--time-limit bounds the whole run: a section that would get less
    than 30 s is skipped with what was left, and the report still comes;
    nonsense limits are refused in one line."""
    out = tmp_path / 'gc'
    proc = subprocess.run(
        [sys.executable, GPU_CHECK, '--device', 'cpu', '--quick',
         '--sections', 'env', 'train', '--time-limit', '31', '--out',
         str(out)], capture_output=True, text=True, cwd=REPO, timeout=300)
    report = json.loads((out / 'gpu_check.json').read_text())
    assert report['sections']['env']['status'] == 'ok', proc.stdout
    train = report['sections']['train']
    assert train['status'] == 'skipped'
    assert train['error'].endswith('s of --time-limit 31 left')
    assert proc.returncode == 0, proc.stdout
    # A short --section-timeout alone kills the section, not the run.
    short = subprocess.run(
        [sys.executable, GPU_CHECK, '--device', 'cpu', '--sections', 'env',
         '--section-timeout', '1', '--out', str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert short.returncode == 1, short.stdout + short.stderr
    env = json.loads((out / 'gpu_check.json').read_text())['sections']['env']
    assert env['status'] == 'failed'
    assert env['error'].startswith('the child died (killed after 1 s)')
    assert sorted(os.listdir(out)) == ['gpu_check.json', 'gpu_check.md',
                                       'logs']
    for value in ('nan', '0', '-5', 'inf'):
        bad = subprocess.run(
            [sys.executable, GPU_CHECK, '--out', str(out), '--time-limit',
             value], capture_output=True, text=True, cwd=REPO)
        assert bad.returncode == 2
        assert ('--time-limit must be a positive number of seconds, got'
                in bad.stderr.strip().splitlines()[-1])


def test_environment_restores_the_variables(monkeypatch):
    sys.path.insert(0, osp.dirname(GPU_CHECK))
    import gpu_check
    monkeypatch.delenv('SFC_PLUGIN_TENSOR_CORES', raising=False)
    monkeypatch.setenv('SFC_TEST_KEEP', 'a')
    with pytest.raises(KeyError):
        with gpu_check.environment(SFC_PLUGIN_TENSOR_CORES='0',
                                   SFC_TEST_KEEP='b'):
            assert os.environ['SFC_PLUGIN_TENSOR_CORES'] == '0'
            assert os.environ['SFC_TEST_KEEP'] == 'b'
            raise KeyError('inside')
    assert 'SFC_PLUGIN_TENSOR_CORES' not in os.environ
    assert os.environ['SFC_TEST_KEEP'] == 'a'


def test_overlap_rows_run_the_loop_with_its_profile():
    """The track section's last rows (benchmarks/tracking_overlap.py in a
    child process), here on CPU at the quick size: a row per setting with
    the predictions agreeing and the matching kernel named, then the
    profiled frame's time and host operators (no kernels on the CPU), and
    the host operators that took the most of its time."""
    import argparse
    sys.path.insert(0, osp.dirname(GPU_CHECK))
    import gpu_check
    details, errors = {}, []
    rows = gpu_check.overlap_rows(
        argparse.Namespace(device='cpu', quick=True), details, errors)
    assert errors == []
    figures = [r['figure'] for r in rows]
    assert figures[:3] == [
        'loop sfc_davis.py bf16, 0 frames in flight',
        'loop sfc_davis.py bf16, 1 frames in flight',
        'loop sfc_davis.py bf16 at 1 in flight: time per frame'
    ]
    host = figures[3:]
    assert 1 <= len(host) <= 8 and all(f.startswith('host ') for f in host)
    # The convolutions take most of a frame: oneDNN's fused calls where
    # it has bf16 kernels (AVX-512 BF16, AMX), else the per-convolution
    # fallback (an AVX2-only CPU).
    from sfc_plugin.models.encoders.conv_relu_fusion import _onednn_has_bf16
    assert ('host mkldnn::_convolution_pointwise' if _onednn_has_bf16()
            else 'host aten::conv2d') in host
    assert all(r['value'] > 0 for r in rows)
    assert rows[1]['note'].startswith('matching CPU kernel, bf16 as ')
    assert 'DIFFER' not in rows[1]['note']
    assert 'host operators taking' in rows[2]['note']
    assert rows[2]['note'].endswith('ms of the host (torch.profiler)')
    assert all(r['note'].endswith(' calls') for r in rows[3:])
    assert details['overlap']['profile']['host_ops'] > 50


def test_kernel_labels_drop_what_says_nothing():
    sys.path.insert(0, osp.dirname(GPU_CHECK))
    import gpu_check
    assert gpu_check.kernel_label(
        'void sfc_plugin::ops::cuda_kernels::topk_window_kernel<float>'
        '(float const*)') == 'topk_window_kernel<float>(float const*)'
    assert gpu_check.kernel_label('void at::native::(anonymous namespace)::'
                                  'relu_kernel', width=4) == 'relu'


def test_an_interruption_between_sections_fails_the_next_one(
        tmp_path, monkeypatch):
    """SIGTERM outside a section's wait (reading its result, writing the
    report) still ends in a report: what ran is kept, the section it
    stopped is failed with the signal, and the exit status is 1."""
    sys.path.insert(0, osp.dirname(GPU_CHECK))
    import gpu_check

    def run_section(name, args, env, logs, timeout):
        if name == 'env':
            return dict(status='ok', seconds=0.1, rows=[], details={})
        raise gpu_check.Interrupted('interrupted by signal 15')

    monkeypatch.setattr(gpu_check, 'run_section', run_section)
    monkeypatch.setattr(gpu_check, 'missing_requirements', lambda env: [])
    monkeypatch.setattr(gpu_check.signal, 'signal', lambda *args: None)
    out = tmp_path / 'gc'
    monkeypatch.setattr(sys, 'argv', [
        'gpu_check.py', '--device', 'cpu', '--sections', 'train', '--out',
        str(out)
    ])
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main()
    assert exit_.value.code == 1
    report = json.loads((out / 'gpu_check.json').read_text())
    assert report['sections']['env']['status'] == 'ok'
    assert report['sections']['train'] == dict(
        status='failed', seconds=0.0,
        error='interrupted by signal 15 before it ended')
    assert list(report['sections']) == ['env', 'train']
    assert 'Failed sections: train.' in (out / 'gpu_check.md').read_text()
    assert sorted(os.listdir(out)) == ['gpu_check.json', 'gpu_check.md',
                                       'logs']


def test_sanitize_rows_are_the_tools_verdicts(tmp_path, monkeypatch):
    """The sanitize section on CUDA, with stand-ins for compute-sanitizer
    and ncu (test_cuda_sanitize's): a row per tool and profile, and a
    failed section naming the tool that found errors."""
    import argparse
    sys.path.insert(0, osp.dirname(GPU_CHECK))
    import gpu_check

    from tests.test_benchmarks.test_cuda_sanitize import (
        FAKE_NCU,
        FAKE_SANITIZER,
        install,
    )
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    install(str(bin_dir), 'compute-sanitizer', FAKE_SANITIZER)
    install(str(bin_dir), 'ncu', FAKE_NCU)
    monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
    args = argparse.Namespace(device='cuda', out=str(tmp_path / 'gc'),
                              section_timeout=480)
    with pytest.raises(gpu_check.SectionFailure) as e:
        gpu_check.section_sanitize(args)
    assert str(e.value).startswith('racecheck: not clean')
    rows = {r['figure']: r for r in e.value.rows}
    assert list(rows) == ['memcheck', 'racecheck', 'synccheck',
                          'ncu float32', 'ncu bfloat16']
    assert rows['memcheck']['value'] == 'ok'
    assert rows['racecheck']['value'] == 'errors'
    assert rows['racecheck']['note'].startswith(
        '2 errors; log logs/sanitize/racecheck.txt')
    assert (tmp_path / 'gc' / 'logs' / 'sanitize' / 'ncu_float32.txt').exists()


def test_overlap_rows_on_cuda_add_the_graphed_encoder(monkeypatch):
    """On CUDA the loop runs once more at 1 in flight with the encoder as
    a CUDA graph, set against the eager run's 1 in flight (the script's
    runs faked: no GPU here)."""
    import argparse
    sys.path.insert(0, osp.dirname(GPU_CHECK))
    import gpu_check
    calls = []

    def fake_run(script, script_args, label, rows, errors, env=None):
        calls.append((script_args, env))
        graphs = '--cuda-graphs' in script_args
        settings = [(1, 60.0)] if graphs else [(0, 40.0), (1, 50.0)]
        return dict(matching_kernel='CUDA tc', profile=None, rows=[
            dict(frames_in_flight=n, frames_per_second=fps,
                 speed_up=fps / 40.0, same_predictions=True)
            for n, fps in settings]), 0

    monkeypatch.setattr(gpu_check, 'run_json_script', fake_run)
    details, errors = {}, []
    rows = gpu_check.overlap_rows(
        argparse.Namespace(device='cuda', quick=False), details, errors)
    assert errors == [] and len(calls) == 2
    assert calls[1][0][calls[1][0].index('--in-flight') + 1] == '1'
    assert all(env == dict(SFC_PLUGIN_TENSOR_CORES='1',
                           SFC_PLUGIN_CUDNN_FUSION='0') for _, env in calls)
    assert [(r['figure'], r['value']) for r in rows] == [
        ('loop sfc_davis.py bf16, 0 frames in flight', 40.0),
        ('loop sfc_davis.py bf16, 1 frames in flight', 50.0),
        ('loop sfc_davis.py bf16 CUDA graphs, 1 frames in flight', 60.0)]
    assert rows[1]['note'] == 'matching CUDA tc; 1.25× over 0 in flight'
    assert rows[2]['note'].startswith(
        'matching CUDA tc; 1.20× over the eager encoder')
    assert set(details) == {'overlap', 'overlap cuda graphs'}
