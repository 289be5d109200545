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
    """The track section's encoder timings (run on CUDA only), here on CPU
    at the quick size: a row and a detail per config and precision."""
    import argparse
    sys.path.insert(0, osp.dirname(GPU_CHECK))
    import gpu_check
    details = {}
    rows = gpu_check.encoder_rows(
        argparse.Namespace(device='cpu', quick=True), details)
    assert [r['figure'] for r in rows] == [
        f'encoder {config} {dtype} (eager)'
        for config in ('fc_davis.py', 'sfc_davis.py')
        for dtype in ('fp32', 'bf16')]
    assert all(r['value'] > 0 and r['unit'] == 'ms/frame' for r in rows)
    assert len(details) == 4
