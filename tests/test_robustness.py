"""Every way the tools were seen to break trust, replayed (issue 11).

Each case runs as a user would (``tools/track.py`` and the other tools in a
child process, or the Python API) and checks the contract: a clear one-line
error naming the file or argument and a non-zero exit status, or the
correct result; never a signal death or a hang (every child has a time
limit); inputs byte-identical afterwards; nothing left that looks
complete.
"""
import hashlib
import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from sfc_plugin.apis import track_video
from sfc_plugin.datasets import synthetic_video, write_davis_sequences
from sfc_plugin.registry import MODELS
from sfc_plugin.utils import register_all_modules

from .conftest import load_tool, run_in_process

FRAMES = 6
SIZE = (64, 112)


def tree_digest(*paths) -> dict:
    """SHA-256 of every file under ``paths`` (and their names and modes)."""
    digest = {}
    for root in map(Path, paths):
        files = [root] if root.is_file() else sorted(root.rglob('*'))
        for f in files:
            if f.is_file():
                digest[str(f)] = (hashlib.sha256(f.read_bytes()).hexdigest(),
                                  f.stat().st_mode)
    return digest


def looks_complete(folder: Path) -> list:
    """Result folders (and staging folders) under ``folder``."""
    return sorted(
        str(p) for p in folder.rglob('*')
        if p.name == 'summary.json' or '.partial-' in p.name)


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
    """A 6-frame, 3-object generated video: frame folder, first mask, an
    mp4 of it, a corrupt mp4 (zeros in the middle) and an FC checkpoint."""
    root = tmp_path_factory.mktemp('clip')
    frames, masks = synthetic_video(FRAMES, SIZE, 3, seed=3)
    write_davis_sequences(str(root / 'davis'), {'clip': (frames, masks)})
    video = root / 'clip.mp4'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'mp4v'), 24,
                             (SIZE[1], SIZE[0]))
    for frame in frames * 4:  # 24 frames
        writer.write(frame)
    writer.release()
    data = bytearray(video.read_bytes())
    start = len(data) // 2
    data[start:start + len(data) // 4] = bytes(len(data) // 4)
    (root / 'corrupt.mp4').write_bytes(bytes(data))
    register_all_modules()
    torch.manual_seed(0)
    backbone = MODELS.build(
        dict(type='ResNet', depth=18, num_stages=3, strides=(1, 2, 1),
             out_indices=(2, )))
    torch.save({'state_dict': {f'backbone.{k}': v
                               for k, v in backbone.state_dict().items()}},
               root / 'fc.pth')
    return dict(root=root,
                frames=root / 'davis' / 'JPEGImages' / '480p' / 'clip',
                first=root / 'davis' / 'Annotations' / '480p' / 'clip' /
                '00000.png',
                video=video,
                corrupt=root / 'corrupt.mp4',
                checkpoint=root / 'fc.pth',
                masks=masks)


def run_tool(python, repo, env, tool, *args, timeout=300, limits=None,
             child=False):
    """A tool in this process (:func:`run_in_process`), or in a child
    process with a time limit (no hang survives) where the test needs one:
    ``limits`` (resource limits), ``child``."""
    if not (limits or child):
        return run_in_process(repo, tool, *args)

    def preexec():
        if limits:
            for what, value in limits.items():
                resource.setrlimit(what, (value, value))

    return subprocess.run([python, str(repo / tool), *map(str, args)],
                          env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=preexec)


def assert_one_line_error(proc, prog: str, *words: str,
                          status: int = 1) -> None:
    """Exit ``status`` (argparse's usage errors: 2, after the usage), no
    traceback, the last line ``<prog>: error: ...`` holding ``words``."""
    assert proc.returncode == status, (proc.returncode, proc.stderr[-3000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert lines and lines[-1].startswith(f'{prog}: error: '), proc.stderr
    for word in words:
        assert word in lines[-1], (word, lines[-1])


def track(python, repo, env, *args, **kw):
    return run_tool(python, repo, env, 'tools/track.py', *args, '--quiet',
                    **kw)


# -- Data loss: an output over an input is refused, inputs untouched -------

@pytest.mark.parametrize('where, relation', [
    ('davis', 'holds'),  # the folder holding frames and labels
    ('frames', 'is'),  # the source folder itself
    ('frames/sub', 'lies inside'),
    ('first', 'is'),  # the label file
    ('checkpoint_dir', 'holds'),
])
def test_output_over_an_input_is_refused(clip, python, repo, subprocess_env,
                                         where, relation):
    targets = dict(davis=clip['root'] / 'davis', frames=clip['frames'],
                   first=clip['first'], checkpoint_dir=clip['root'])
    out = (clip['frames'] / 'sub' if where == 'frames/sub' else
           targets[where])
    before = tree_digest(clip['root'])
    proc = track(python, repo, subprocess_env, clip['frames'], clip['first'],
                 '--out', out, '--overwrite', '--checkpoint',
                 clip['checkpoint'], '--no-overlay')
    assert_one_line_error(proc, 'track.py', relation, 'never written')
    assert tree_digest(clip['root']) == before
    assert looks_complete(clip['root']) == []


def test_overwrite_replaces_only_a_previous_result(clip, tmp_path, python,
                                                   repo, subprocess_env):
    out = tmp_path / 'mine'
    out.mkdir()
    (out / 'notes.txt').write_text('my notes')
    proc = track(python, repo, subprocess_env, clip['frames'], clip['first'],
                 '--out', out, '--overwrite', '--no-overlay')
    assert_one_line_error(proc, 'track.py', 'not a previous tracking result',
                          'notes.txt')
    assert (out / 'notes.txt').read_text() == 'my notes'
    assert looks_complete(tmp_path) == []


def test_demo_never_overwrites_a_foreign_folder(tmp_path, python, repo,
                                                subprocess_env):
    (tmp_path / 'keep.txt').write_text('mine')
    proc = track(python, repo, subprocess_env, '--demo', '--out', tmp_path,
                 '--overwrite')
    assert_one_line_error(proc, 'track.py', 'not a previous demo')
    assert sorted(os.listdir(tmp_path)) == ['keep.txt']


def test_abandoned_staging_folder_is_named_and_removed(
        clip, tmp_path, python, repo, subprocess_env):
    # What a SIGKILLed run leaves: a staging folder whose owner is gone.
    dead = subprocess.Popen([python, '-c', 'pass'])
    dead.wait()
    staging = tmp_path / '.out.partial-killed'
    staging.mkdir()
    (staging / '00000.png').write_bytes(b'half')
    (staging / '.owner').write_text(f'{os.uname().nodename} {dead.pid}\n')
    proc = track(python, repo, subprocess_env, clip['frames'], clip['first'],
                 '--out', tmp_path / 'out', '--no-overlay')
    assert proc.returncode == 0, proc.stderr
    assert f'removed "{staging}"' in proc.stderr
    assert 'killed before it finished' in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ['out']


# -- Hangs and crashes: bounded whatever the value --------------------------

def test_infinite_radius_means_no_window(clip, tmp_path, python, repo,
                                         subprocess_env):
    inputs = tree_digest(clip['root'])
    proc = track(python, repo, subprocess_env, clip['frames'], clip['first'],
                 '--out', tmp_path / 'inf', '--no-overlay', '--cfg-options',
                 'model.propagator.radius=inf', timeout=120)
    assert proc.returncode == 0, proc.stderr
    # The same masks as a radius reaching every position of the frame.
    track_video(clip['frames'], clip['first'], tmp_path / 'wide',
                cfg_options={'model.propagator.radius': 1000.0},
                overlay=False, progress=False)
    for t in range(FRAMES):
        name = f'{t:05d}.png'
        assert np.array_equal(np.array(Image.open(tmp_path / 'inf' / name)),
                              np.array(Image.open(tmp_path / 'wide' / name)))
    assert tree_digest(clip['root']) == inputs


@pytest.mark.parametrize('value', ['nan', '-1', 'abc', '[1]'])
def test_bad_radius_is_one_line(clip, tmp_path, python, repo, subprocess_env,
                                value):
    proc = track(python, repo, subprocess_env, clip['frames'], clip['first'],
                 '--out', tmp_path / 'o', '--no-overlay', '--cfg-options',
                 f'model.propagator.radius={value}', timeout=120)
    assert_one_line_error(proc, 'track.py', 'radius')
    assert looks_complete(tmp_path) == []


@pytest.mark.parametrize('call, words', [
    ('topk_window_match(torch.zeros(0, 3, 3), torch.zeros(2, 0, 3, 3), '
     'torch.zeros(2, 2, 3, 3), topk=3, radius=2.0, temperature=0.1)',
     ['C = 0']),
    ('torch.ops.sfc.topk_window_neighbours(torch.zeros(1, 0, 3, 3), '
     'torch.zeros(1, 2, 0, 3, 3), 3, 2.0, 0.1, 1)', ['C = 0']),
    ('torch.ops.sfc.topk_window_neighbours(torch.randn(1, 4, 3, 3), '
     'torch.randn(1, 2, 4, 3, 3), 3, float("inf"), 0.1, 1)', None),
    ('topk_window_match(torch.randn(4, 3, 3), torch.randn(2, 4, 3, 3), '
     'torch.rand(2, 2, 3, 3), topk=2.7, radius=2.0, temperature=0.1)',
     ['topk', 'integer']),
])
def test_op_inputs_never_kill_or_hang_the_interpreter(python, subprocess_env,
                                                      call, words):
    code = '\n'.join([
        'import torch',
        'from sfc_plugin.ops import load_native_ops, topk_window_match',
        'load_native_ops()',
        'try:',
        f'    {call}',
        '    print("ok")',
        'except ValueError as e:',
        '    print("ValueError:", e)',
    ])
    proc = subprocess.run([python, '-c', code], env=subprocess_env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    if words is None:
        assert proc.stdout.strip() == 'ok'
    else:
        assert proc.stdout.startswith('ValueError: topk_window_match:')
        for word in words:
            assert word in proc.stdout


def test_absurd_topk_is_bounded():
    from sfc_plugin.ops import topk_window_match
    gen = torch.Generator().manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(8, 5, 6, generator=gen),
                                          dim=0)
    keys = torch.nn.functional.normalize(
        torch.randn(3, 8, 5, 6, generator=gen), dim=1)
    labels = torch.rand(3, 2, 5, 6, generator=gen)
    kw = dict(radius=2.0, temperature=0.1)
    all_keys = topk_window_match(query, keys, labels, topk=3 * 5 * 6, **kw)
    torch.testing.assert_close(
        topk_window_match(query, keys, labels, topk=2**40, **kw), all_keys)


def test_absurd_topk_tracks_as_the_keys_a_position_sees(
        clip, tmp_path, python, repo, subprocess_env):
    """topk = 10**9 once grew track.py to the machine's memory and had it
    killed at 480p: the match now sizes its lists by the keys a position
    can see, and the masks are those of that topk."""
    from sfc_plugin.ops import most_eligible_keys
    proc = track(python, repo, subprocess_env, clip['frames'], clip['first'],
                 '--out', tmp_path / 'huge', '--no-overlay', '--cfg-options',
                 'model.propagator.topk=1000000000',
                 'model.propagator.radius=3', timeout=300)
    assert proc.returncode == 0, proc.stderr
    # fc_davis: 1 + 20 key frames on 8 x 14 feature maps; radius 3.
    bound = most_eligible_keys(21, 8, 14, 3.0, 1)
    assert bound == 8 * 14 + 20 * 25  # dy² + dx² < 9: 25 offsets
    track_video(clip['frames'], clip['first'], tmp_path / 'bound',
                cfg_options={'model.propagator.topk': bound,
                             'model.propagator.radius': 3},
                overlay=False, progress=False)
    for t in range(FRAMES):
        name = f'{t:05d}.png'
        assert np.array_equal(np.array(Image.open(tmp_path / 'huge' / name)),
                              np.array(Image.open(tmp_path / 'bound' / name)))


@pytest.mark.parametrize('left, match', [
    (8 * 2**20, r'LabelPropagator\.init: 101 key frames \(1 \+ '
     r'context_frames=100'),
    (2**20, r'SFCTracker: encoding 112×64 frames'),
])
def test_what_the_host_cannot_hold_is_named(clip, tmp_path, monkeypatch,
                                            left, match):
    """context_frames = 3000 at 480p once filled 19.6 GB of a 23 GB machine
    (a little more and the system kills the run), and a 12000 x 12000 video
    was at 14 GB and 20 CPU minutes into frame 0 when stopped: buffers and
    frames
    beyond the memory left are refused before they are allocated, naming
    the setting or the size, and the run leaves nothing. (Here the memory
    left is 8 MiB, then 1 MiB; the context buffers need 11.7 MiB, the
    encoder 3.6 MiB.)"""
    from sfc_plugin.utils import memory
    from sfc_plugin.utils.cli import USER_ERRORS
    monkeypatch.setattr(memory, 'available_host_memory', lambda: left)
    with pytest.raises(memory.HostMemoryError, match=match) as err:
        track_video(clip['frames'], clip['first'], tmp_path / 'o',
                    cfg_options={'model.propagator.context_frames': 100},
                    overlay=False, progress=False)
    assert isinstance(err.value, USER_ERRORS)  # one line, no "unexpected"
    assert looks_complete(tmp_path) == [] and not (tmp_path / 'o').exists()


def test_export_forms_validate_and_stay_bounded():
    from sfc_plugin.deploy import PropagationStep
    from sfc_plugin.ops import (
        topk_window_match,
        topk_window_match_decomposed,
    )
    gen = torch.Generator().manual_seed(1)
    query = torch.nn.functional.normalize(
        torch.randn(1, 8, 5, 6, generator=gen), dim=1)
    keys = torch.nn.functional.normalize(
        torch.randn(1, 3, 8, 5, 6, generator=gen), dim=2)
    labels = torch.rand(1, 3, 2, 5, 6, generator=gen)
    # An absurd k and an infinite radius: the result of k = T·H·W and no
    # window, no huge padding.
    torch.testing.assert_close(
        topk_window_match_decomposed(query, keys, labels, topk=2**40,
                                     radius=math.inf, temperature=0.1),
        topk_window_match(query, keys, labels, topk=90, radius=1000.0,
                          temperature=0.1))
    for bad, name in [(dict(topk=2.5), 'topk'),
                      (dict(radius=math.nan), 'radius'),
                      (dict(temperature=0.0), 'temperature'),
                      (dict(unrestricted_keys=-1), 'unrestricted_keys')]:
        kwargs = dict(topk=3, radius=2.0, temperature=0.1)
        kwargs.update(bad)
        with pytest.raises(ValueError, match=f'PropagationStep: {name}'):
            PropagationStep(**kwargs)


def test_the_dense_form_is_refused_where_the_host_cannot_hold_it(
        monkeypatch):
    """Its (H·W, T·H·W) affinity grows with the square of the frame: the
    export check of --size 2048 2048 took 17 GB before it failed."""
    from sfc_plugin.ops import decomposed_bytes, topk_window_match_decomposed
    from sfc_plugin.utils import memory
    query = torch.randn(1, 4, 8, 8)
    keys = torch.randn(1, 2, 4, 8, 8)
    labels = torch.rand(1, 2, 3, 8, 8)
    need = decomposed_bytes(1, 2, 8, 8, 4)
    assert need == 64 * 128 * 2 * 4 + 64 * 64 * 5
    # The exported graph in ONNX Runtime holds more (its export check).
    assert decomposed_bytes(1, 2, 8, 8, 4, 'onnxruntime') == (
        64 * 128 * 3 * 4 + 64 * 64 * 5)
    monkeypatch.setattr(memory, 'available_host_memory', lambda: need - 1)
    with pytest.raises(memory.HostMemoryError,
                       match=r'^topk_window_match_decomposed: the dense '
                       r'\(64, 128\) affinity of 1 query frame\(s\) of 8×8'):
        topk_window_match_decomposed(query, keys, labels, topk=3,
                                     radius=2.0, temperature=0.1)
    monkeypatch.setattr(memory, 'available_host_memory', lambda: need)
    topk_window_match_decomposed(query, keys, labels, topk=3, radius=2.0,
                                 temperature=0.1)


def test_unnormalised_features_are_blamed_on_overflow():
    from sfc_plugin.ops import topk_window_match
    query = torch.full((4, 3, 3), 1e30)
    keys = torch.full((2, 4, 3, 3), 1e30)
    with pytest.raises(ValueError, match='overflow'):
        topk_window_match(query, keys, torch.rand(2, 2, 3, 3), topk=3,
                          radius=2.0, temperature=0.1)


# -- Truncated work is never reported complete -----------------------------

def test_corrupt_video_is_an_error_counting_the_frames_decoded(
        clip, tmp_path, python, repo, subprocess_env):
    out = tmp_path / 'out'
    proc = track(python, repo, subprocess_env, clip['corrupt'], clip['first'],
                 '--out', out, '--no-overlay', child=True)
    assert_one_line_error(proc, 'track.py', str(clip['corrupt']),
                          'cannot be decoded to its end', 'of its 24 frames',
                          'numbered in decoding order')
    # FFmpeg's own per-macroblock log is not passed on.
    assert len(proc.stderr.splitlines()) < 5, proc.stderr[:2000]
    assert looks_complete(tmp_path) == []
    accepted = track(python, repo, subprocess_env, clip['corrupt'],
                     clip['first'], '--out', out, '--no-overlay',
                     '--accept-truncated')
    assert accepted.returncode == 0, accepted.stderr
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['complete'] is False
    assert summary['source_frames'] == 24
    assert summary['frames'] == summary['source_truncated_at'] < 24
    assert (f'only {summary["frames"]} of the 24 frames of the source '
            'could be decoded (accepted truncated source); results and '
            'anchors follow decoding order') in summary['incomplete_reason']
    assert len(list(out.glob('*.png'))) == summary['frames']
    # max_frames stopping the run is said whether or not the reader, ahead
    # of the tracker, has met the break yet.
    stopped = track(python, repo, subprocess_env, clip['corrupt'],
                    clip['first'], '--out', out, '--no-overlay',
                    '--accept-truncated', '--max-frames', 2, '--overwrite')
    assert stopped.returncode == 0, stopped.stderr
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['frames'] == 2 and summary['complete'] is False
    assert summary['incomplete_reason'].startswith(
        'stopped after max_frames=2 of 24 frames')


def test_cut_overlay_fails_the_run(clip, tmp_path, python, repo,
                                   subprocess_env):
    # A file-size limit that the PNGs fit and the overlay video does not.
    proc = track(python, repo, subprocess_env, clip['video'], clip['first'],
                 '--out', tmp_path / 'out',
                 limits={resource.RLIMIT_FSIZE: 20_000})
    assert_one_line_error(proc, 'track.py', 'overlay.mp4', 'failed')
    assert looks_complete(tmp_path) == []


def test_max_frames_records_the_source_length(clip, tmp_path, python, repo,
                                              subprocess_env):
    out = tmp_path / 'out'
    proc = track(python, repo, subprocess_env, clip['video'], clip['first'],
                 '--out', out, '--no-overlay', '--max-frames', 5)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / 'summary.json').read_text())
    assert (summary['frames'], summary['source_frames']) == (5, 24)
    assert summary['complete'] is False
    assert 'max_frames=5 of 24' in summary['incomplete_reason']
    assert 'Incomplete:' in proc.stderr


@pytest.mark.parametrize('value, message', [
    (0, r'must be >= 1 \(or None for all frames\), got 0'),
    (-3, r'must be >= 1 \(or None for all frames\), got -3'),
    (2.5, 'must be an integer'), (True, 'must be an integer'),
    ('4', 'must be an integer')])
def test_max_frames_must_be_a_positive_integer(clip, tmp_path, value,
                                               message):
    with pytest.raises(ValueError, match='track_video: max_frames ' + message):
        track_video(clip['frames'], clip['first'], tmp_path / 'o',
                    max_frames=value, overlay=False, progress=False)
    assert not (tmp_path / 'o').exists()


# -- Silently wrong labels are refused --------------------------------------

def write_labels(path: Path, kind: str, masks) -> Path:
    mask = masks[0]
    if kind == 'ids300':
        ids = np.zeros(SIZE, np.uint16)
        for i in range(300):
            y, x = divmod(i, 20)
            ids[y * 4:(y + 1) * 4, x * 5:(x + 1) * 5] = i + 1
        Image.fromarray(ids).save(path)
    elif kind == 'jpeg':
        cv2.imwrite(str(path), (mask * 80).astype(np.uint8),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
    elif kind == 'jpeg-as-png':
        ok, data = cv2.imencode('.jpg', (mask * 80).astype(np.uint8),
                                [cv2.IMWRITE_JPEG_QUALITY, 75])
        Image.fromarray(cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)).save(path)
    return path


@pytest.mark.parametrize('kind, name, words', [
    ('ids300', 'ids.png', ['holds id 300', 'above 255']),
    ('jpeg', 'mask.jpg', ['JPEG', 'lossy']),
    ('jpeg-as-png', 'noise.png', ['compression noise']),
])
def test_labels_that_cannot_be_meant_are_refused(clip, tmp_path, python,
                                                 repo, subprocess_env, kind,
                                                 name, words):
    labels = write_labels(tmp_path / name, kind, clip['masks'])
    proc = track(python, repo, subprocess_env, clip['frames'], labels,
                 '--out', tmp_path / 'out', '--no-overlay')
    assert_one_line_error(proc, 'track.py', str(labels), *words)
    assert looks_complete(tmp_path) == []


# -- A deployed model never silently ignores --checkpoint ------------------

@pytest.fixture(scope='module')
def exported(clip, tmp_path_factory):
    """An FC encoder exported to ONNX from the clip's checkpoint."""
    pytest.importorskip('onnxruntime')
    from sfc_plugin.deploy import export_encoder
    from sfc_plugin.utils.config import load_config
    root = tmp_path_factory.mktemp('onnx')
    register_all_modules()
    out = str(root / 'fc.onnx')
    export_encoder(load_config('fc_davis.py'), out,
                   [str(clip['frames'] / '00000.jpg')], num_frames=1,
                   checkpoint=str(clip['checkpoint']))
    other = root / 'other.pth'
    state = torch.load(clip['checkpoint'], weights_only=True)
    state['state_dict'] = {k: v + 1 if v.is_floating_point() else v
                           for k, v in state['state_dict'].items()}
    torch.save(state, other)
    return dict(model=Path(out), other=other)


def test_backend_with_another_checkpoint_is_refused(clip, exported, tmp_path,
                                                    python, repo,
                                                    subprocess_env):
    proc = track(python, repo, subprocess_env, clip['frames'], clip['first'],
                 '--out', tmp_path / 'out', '--no-overlay', '--backend',
                 'onnxruntime', '--backend-model', exported['model'],
                 '--checkpoint', exported['other'])
    assert_one_line_error(proc, 'track.py', str(exported['other']),
                          'SHA-256 differs', 'drop --checkpoint')
    assert looks_complete(tmp_path) == []


def test_backend_with_its_own_checkpoint_is_recorded(clip, exported,
                                                     tmp_path):
    summary = track_video(clip['frames'], clip['first'], tmp_path / 'out',
                          checkpoint=clip['checkpoint'],
                          backend='onnxruntime',
                          backend_model=exported['model'], overlay=False,
                          progress=False)
    record = summary['weights']['backend_model']
    assert record['path'] == str(exported['model'])
    assert record['exported_from']['path'] == str(clip['checkpoint'])
    assert len(record['exported_from']['sha256']) == 64


def test_backend_exported_from_another_config_is_refused(
        clip, exported, tmp_path, python, repo, subprocess_env):
    """An FC model under sfc_davis.py once tracked with SFC's propagation
    settings and recorded sfc_davis.py as its config."""
    proc = track(python, repo, subprocess_env, clip['frames'], clip['first'],
                 '--out', tmp_path / 'out', '--no-overlay', '--config',
                 'sfc_davis.py', '--backend', 'onnxruntime',
                 '--backend-model', exported['model'])
    assert_one_line_error(proc, 'track.py', '256-channel features',
                          'FusedCorrespondenceEncoder) has 1280',
                          'track with the config it was exported from')
    assert looks_complete(tmp_path) == []


# -- User errors: one line naming the file or argument ---------------------

@pytest.fixture()
def bad_files(tmp_path):
    syntax = tmp_path / 'broken_cfg.py'
    syntax.write_text("_base_ = ['fc_davis.py']\nmodel = dict(\n")
    text = tmp_path / 'notes.pth'
    text.write_text('not a checkpoint\n')
    partial = tmp_path / 'partial.pth'
    torch.save({'state_dict': {'backbone.conv1.weight': torch.zeros(1)}},
               partial)
    nan = tmp_path / 'nan.pth'
    register_all_modules()
    backbone = MODELS.build(dict(type='ResNet', depth=18, num_stages=3,
                                 strides=(1, 2, 1), out_indices=(2, )))
    state = backbone.state_dict()
    state['layer1.0.conv1.weight'][0, 0, 0, 0] = math.nan
    torch.save(state, nan)
    garbage = tmp_path / 'garbage.onnx'
    garbage.write_bytes(os.urandom(2048))
    a_file = tmp_path / 'a_file'
    a_file.write_text('x')
    return dict(syntax=syntax, text=text, partial=partial, nan=nan,
                garbage=garbage, a_file=a_file)


@pytest.mark.parametrize('args, words', [
    (['--config', '{syntax}'], ['broken_cfg.py', 'cannot be read']),
    (['--cfg-options', 'model.propagator.radiuss=3'],
     ['LabelPropagator takes no setting "radiuss"',
      'model.propagator.radiuss']),
    (['--cfg-options', 'model.propagator.radius'],
     ['--cfg-options', 'KEY=VALUE']),
    (['--checkpoint', '{text}'], ['notes.pth', 'not a PyTorch checkpoint']),
    (['--checkpoint', '{partial}'], ['partial.pth', 'misses']),
    (['--checkpoint', '{nan}'], ['nan.pth', 'NaN', 'layer1.0.conv1.weight']),
    (['--backend', 'onnxruntime', '--backend-model', '{garbage}'],
     ['garbage.onnx']),
    (['--device', 'tpu'], ['tpu']),
    (['--device', 'cpu:99'], ['"cpu:99"', 'the CPU is one device']),
    (['--num-classes', 'x'], ['--num-classes', "'x'"]),
])
def test_user_errors_are_one_line(clip, tmp_path, bad_files, python, repo,
                                  subprocess_env, args, words):
    args = [a.format(**bad_files) for a in args]
    proc = track(python, repo, subprocess_env, clip['frames'], clip['first'],
                 '--out', tmp_path / 'out', '--no-overlay', *args)
    usage = args[0] == '--num-classes' or (args[0] == '--cfg-options'
                                           and '=' not in args[1])
    assert_one_line_error(proc, 'track.py', *words, status=2 if usage else 1)
    assert looks_complete(tmp_path) == []


def test_debug_shows_the_traceback(clip, tmp_path, bad_files, python, repo,
                                   subprocess_env):
    proc = track(python, repo, subprocess_env, clip['frames'], clip['first'],
                 '--out', tmp_path / 'out', '--checkpoint',
                 bad_files['text'], '--debug', child=True)
    assert proc.returncode == 1 and 'Traceback' in proc.stderr
    assert 'not a PyTorch checkpoint' in proc.stderr


def test_visualiser_out_that_is_a_file(clip, bad_files, python, repo,
                                       subprocess_env):
    frame = clip['frames'] / '00000.jpg'
    proc = run_tool(python, repo, subprocess_env,
                    'tools/visualize_correspondence.py', frame, frame,
                    '--point', '3', '3', '--out', bad_files['a_file'],
                    '--config', 'fc_davis.py')
    assert_one_line_error(proc, 'visualize_correspondence.py', '--out',
                          'is a file')
    assert bad_files['a_file'].read_text() == 'x'


@pytest.mark.parametrize('out, extra, named', [
    # A checkpoint set in the config (not by --checkpoint).
    ('{tmp}/fc.onnx', ['--cfg-options', 'model.encoder.checkpoint={tmp}/fc.'
                       'onnx'], 'config setting model.encoder.checkpoint'),
    # The report beside the model would replace a _base_ file of JSON.
    ('{tmp}/base.onnx', [], 'base.json" is the _base_ config'),
    ('', [], '--out is empty'),
    # A folder where the model would go.
    ('{tmp}/dir.onnx', [], 'dir.onnx" is a folder'),
])
def test_to_onnx_never_writes_what_the_config_reads(clip, tmp_path, repo,
                                                    capsys, out, extra,
                                                    named):
    from sfc_plugin.utils import cli
    (tmp_path / 'fc.onnx').write_bytes(b'a checkpoint named like a model')
    (tmp_path / 'base.json').write_text('{"x": 1}')
    (tmp_path / 'dir.onnx').mkdir()
    config = tmp_path / 'cfg.py'
    config.write_text(f"_base_ = ['{repo}/configs/fc_davis.py', "
                      f"'{tmp_path}/base.json']\n")
    before = tree_digest(tmp_path)
    with pytest.raises(SystemExit, match='1'):
        cli.run_tool(load_tool('export/to_onnx.py').main, 'to_onnx.py', [
            str(config), '--frames', str(clip['frames']), '--out',
            out.format(tmp=tmp_path)
        ] + [e.format(tmp=tmp_path) for e in extra])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err
    assert tree_digest(tmp_path) == before


def test_to_onnx_unwritable_output_is_refused_before_export(
        clip, tmp_path, repo, monkeypatch, capsys):
    from sfc_plugin.utils import cli
    locked = tmp_path / 'locked'
    locked.mkdir()
    real_access = os.access
    # Root ignores permission bits: make the folder read-only as seen by
    # the check, the way it is for any other user.
    monkeypatch.setattr(
        os, 'access', lambda p, mode: False if Path(p) == locked else
        real_access(p, mode))
    tool = load_tool('export/to_onnx.py')
    with pytest.raises(SystemExit, match='1'):
        cli.run_tool(tool.main, 'to_onnx.py', [
            str(repo / 'configs' / 'fc_davis.py'), '--frames',
            str(clip['frames']), '--out', str(locked / 'fc.onnx')
        ])
    err = capsys.readouterr().err.strip()
    assert err.startswith('to_onnx.py: error: --out folder')
    assert 'not writable' in err and len(err.splitlines()) == 1
    assert os.listdir(locked) == []


@pytest.mark.parametrize('option', [
    'test_evaluator.output_dir={root}/Annotations/480p',
    'test_evaluator.output_dir={root}',
])
def test_evaluation_results_never_land_in_the_dataset(
        clip, tmp_path, python, repo, subprocess_env, option):
    root = clip['root'] / 'davis'
    before = tree_digest(root)
    proc = run_tool(python, repo, subprocess_env, 'tools/test.py',
                    repo / 'configs' / 'fc_davis.py', '--work-dir',
                    tmp_path / 'work', '--cfg-options',
                    f'test_dataloader.dataset.data_root={root}',
                    'test_dataloader.dataset.ann_file=ImageSets/val.txt',
                    option.format(root=root))
    assert_one_line_error(proc, 'test.py', 'test_evaluator.output_dir',
                          'data root')
    assert tree_digest(root) == before


def test_work_dir_inside_the_data_is_refused(clip, python, repo,
                                             subprocess_env):
    root = clip['root'] / 'davis'
    before = tree_digest(root)
    proc = run_tool(python, repo, subprocess_env, 'tools/test.py',
                    repo / 'configs' / 'fc_davis.py', '--work-dir',
                    root / 'logs', '--cfg-options',
                    f'test_dataloader.dataset.data_root={root}')
    assert_one_line_error(proc, 'test.py', 'work_dir', 'inside the data root')
    assert tree_digest(root) == before and not (root / 'logs').exists()


def test_nan_weights_are_named_at_load(clip, bad_files, tmp_path):
    with pytest.raises(ValueError, match='nan.pth.*NaN or infinite'):
        track_video(clip['frames'], clip['first'], tmp_path / 'o',
                    checkpoint=bad_files['nan'], overlay=False,
                    progress=False)
    assert looks_complete(tmp_path) == []


# -- The API takes any os.PathLike -----------------------------------------

def test_api_takes_path_objects(clip, tmp_path):
    summary = track_video(clip['frames'], clip['first'], tmp_path / 'out',
                          checkpoint=clip['checkpoint'], overlay=False,
                          progress=False, config=Path('fc_davis.py'))
    assert summary['complete'] is True
    assert summary['frames'] == summary['source_frames'] == FRAMES
    assert summary['objects'] == 3
    record = summary['weights']['model.encoder']
    assert record['path'] == str(clip['checkpoint'])
    assert len(record['sha256']) == 64


def test_random_init_is_recorded_and_printed(clip, tmp_path, python, repo,
                                             subprocess_env):
    proc = track(python, repo, subprocess_env, clip['frames'], clip['first'],
                 '--out', tmp_path / 'out', '--no-overlay')
    assert proc.returncode == 0, proc.stderr
    assert 'randomly initialised' in proc.stdout
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert summary['weights'] == {'model.encoder': 'random init'}
    assert summary['producer'] == 'sfc_plugin.apis.track_video'


if __name__ == '__main__':
    sys.exit(pytest.main([__file__, '-q']))
