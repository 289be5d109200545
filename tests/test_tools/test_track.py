import csv
import os
import shutil
import signal
import subprocess
import time

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from sfc_plugin.apis import init_tracker, track_video, tracker_config
from sfc_plugin.datasets import (
    read_object_mask,
    synthetic_video,
    write_davis_sequences,
)
from sfc_plugin.evaluation import evaluate_davis_results
from sfc_plugin.utils.cli import run_tool
from sfc_plugin.utils.fileio import save_palette_png

from ..conftest import load_tool, run_in_process
from .test_test import run_fc_davis


def track_cli(python, repo, env, *args, timeout=600, child=False):
    """tools/track.py: in this process (no start-up cost), or in a child
    process where the test needs one."""
    if not child:
        return run_in_process(repo, 'tools/track.py', *args)
    return subprocess.run([python, str(repo / 'tools' / 'track.py'), *args],
                          env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_demo_tracks_a_generated_video_and_prints_its_j_and_f(
        python, repo, subprocess_env, tmp_path):
    out = tmp_path / 'demo'
    proc = track_cli(python, repo, subprocess_env, '--demo', '--out',
                     str(out), child=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'randomly initialised' in proc.stdout
    # Progress in a log: lines in frames and frames/s.
    assert '40/40 frames' in proc.stderr and 'frames/s' in proc.stderr
    table = proc.stdout.strip().splitlines()
    assert table[-3].startswith('| J&F-Mean | J-Mean')
    j_and_f = float(table[-1].split('|')[1])
    # Random weights with seed 0 track the textured shapes well enough.
    assert 0.5 < j_and_f <= 1
    results = out / 'results' / 'demo'
    assert (results / 'summary.json').is_file()
    assert len(list(results.glob('*.png'))) == 40
    # The demo's data is a DAVIS layout the evaluation reads.
    scores = evaluate_davis_results(str(out / 'results'), str(out / 'data'),
                                    'ImageSets/val.txt')
    assert scores['J&F-Mean'] == pytest.approx(j_and_f, abs=1e-4)
    # Run again into the same folder: refused, nothing changed.
    proc = track_cli(python, repo, subprocess_env, '--out', str(out))
    assert proc.returncode != 0 and 'already holds files' in proc.stderr
    # --overwrite replaces a previous demo only: a file of the user's in
    # its data folder (or a link there) stops it before anything is written.
    (out / 'data' / 'JPEGImages' / 'notes.txt').write_text('mine')
    frame = out / 'data' / 'JPEGImages' / '480p' / 'demo' / '00000.jpg'
    before = frame.read_bytes()
    frame.unlink()
    frame.symlink_to(out / 'data' / 'JPEGImages' / 'notes.txt')
    proc = track_cli(python, repo, subprocess_env, '--out', str(out),
                     '--overwrite')
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f'track.py: error: --out "{out}" is not a previous demo (it holds '
        '"data/JPEGImages/480p/demo/00000.jpg"): --overwrite replaces only '
        'a previous demo; choose another folder'
    ]
    assert (out / 'data' / 'JPEGImages' / 'notes.txt').read_text() == 'mine'
    frame.unlink()
    frame.write_bytes(before)


def test_cli_usage_errors(python, repo, subprocess_env, tmp_path):
    proc = track_cli(python, repo, subprocess_env, str(tmp_path))
    assert proc.returncode == 2
    assert 'give SOURCE and FIRST_LABELS' in proc.stderr
    proc = track_cli(python, repo, subprocess_env, str(tmp_path), 'm.png')
    assert proc.returncode == 2 and '--out DIR is required' in proc.stderr
    proc = track_cli(python, repo, subprocess_env, str(tmp_path / 'none'),
                     'm.png', '--out', str(tmp_path / 'o'))
    assert proc.returncode == 1
    assert proc.stderr.startswith('track.py: error: Video source not found')
    proc = track_cli(python, repo, subprocess_env, '--demo', '--max-frames',
                     '3')
    assert proc.returncode == 2 and ('--demo scores every frame'
                                     in proc.stderr)


def test_missing_backend_is_one_line(python, repo, subprocess_env, tmp_path):
    frames, masks = synthetic_video(3, (32, 48), 1)
    write_davis_sequences(str(tmp_path / 'd'), {'v': (frames, masks)})
    engine = tmp_path / 'fc.engine'
    engine.write_bytes(b'not an engine')
    proc = track_cli(
        python, repo, subprocess_env,
        str(tmp_path / 'd' / 'JPEGImages' / '480p' / 'v'),
        str(tmp_path / 'd' / 'Annotations' / '480p' / 'v' / '00000.png'),
        '--out', str(tmp_path / 'results' / 'v'), '--backend', 'tensorrt',
        '--backend-model', str(engine))
    assert proc.returncode == 1
    # Without TensorRT or a GPU: needs ...; with them: cannot load the file.
    assert proc.stderr.startswith('track.py: error: TensorRTBackend')
    assert os.listdir(tmp_path / 'results') == []


def default_signals():
    # A job started in the background of a shell ignores SIGINT, and so
    # would the child; Ctrl-C at a terminal finds the default disposition.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_no_result(python, repo, subprocess_env,
                                          tmp_path, signum):
    frames, masks = synthetic_video(200, (64, 112), 2, seed=3)
    write_davis_sequences(str(tmp_path / 'd'), {'long': (frames, masks)})
    results = tmp_path / 'results'
    proc = subprocess.Popen([
        python, str(repo / 'tools' / 'track.py'),
        str(tmp_path / 'd' / 'JPEGImages' / '480p' / 'long'),
        str(tmp_path / 'd' / 'Annotations' / '480p' / 'long' / '00000.png'),
        '--out', str(results / 'long'), '--quiet'
    ], env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_signals)
    deadline = time.time() + 300
    staged = []
    while time.time() < deadline and proc.poll() is None:
        staged = list(results.glob('.long.partial-*/*.png')) if (
            results.is_dir()) else []
        if len(staged) >= 5:
            break
        time.sleep(0.2)
    assert len(staged) >= 5, 'the run did not start writing'
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert 'Interrupted: no result was written' in err
    assert os.listdir(results) == []


def downscaled_val_sequences(davis2016, root, frames_per_video=6,
                             size=(240, 432)):
    """The shared val sequences, first frames, at a quarter of the pixels.
    """
    sequences = (davis2016 / 'ImageSets' / 'val.txt').read_text().split()
    videos = {}
    for seq in sequences:
        names = sorted(os.listdir(davis2016 / 'JPEGImages' / '480p' /
                                  seq))[:frames_per_video]
        frames, masks = [], []
        for name in names:
            img = cv2.imread(str(davis2016 / 'JPEGImages' / '480p' / seq /
                                 name))
            frames.append(cv2.resize(img, size[::-1],
                                     interpolation=cv2.INTER_AREA))
            mask = read_object_mask(
                str(davis2016 / 'Annotations' / '480p' / seq /
                    name.replace('.jpg', '.png')))
            masks.append(cv2.resize(mask, size[::-1],
                                    interpolation=cv2.INTER_NEAREST))
        videos[seq] = (frames, masks)
    write_davis_sequences(str(root), videos, binary=True)
    return sequences


def test_track_gives_the_j_and_f_of_the_test_tool(python, repo, davis2016,
                                                  subprocess_env, tmp_path,
                                                  capsys):
    """tools/track.py on each val sequence = tools/test.py (mim test)."""
    root = tmp_path / 'davis'
    sequences = downscaled_val_sequences(davis2016, root)
    assert len(sequences) == 6
    checkpoint = tmp_path / 'fc.pth'
    model = init_tracker(tracker_config('fc_davis.py'), 'cpu', seed=3)
    torch.save(model.encoder.backbone.state_dict(), checkpoint)

    test_out, _ = run_fc_davis(python, repo, subprocess_env, root, tmp_path,
                               extra=[str(checkpoint)])
    with open(test_out / 'global_results-val.csv') as f:
        header, values = list(csv.reader(f))
    expected = dict(zip(header, map(float, values)))

    results = tmp_path / 'track_results'
    for seq in sequences:
        track_video(
            str(root / 'JPEGImages' / '480p' / seq),
            str(root / 'Annotations' / '480p' / seq / '00000.png'),
            str(results / seq), checkpoint=str(checkpoint), progress=False,
            overlay=False)
        for png in sorted((test_out / seq).glob('*.png')):
            assert np.array_equal(np.array(Image.open(png)),
                                  np.array(Image.open(results / seq /
                                                      png.name))), png
    scores = evaluate_davis_results(str(results), str(root),
                                    'ImageSets/val.txt')
    assert 0.2 < scores['J&F-Mean'] < 1
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, abs=1e-6), key
    load_tool('tools/eval_davis.py').main([
        str(results), '--data-root', str(root), '--ann-file',
        'ImageSets/val.txt'
    ])
    header, _, row = capsys.readouterr().out.strip().splitlines()
    assert header.startswith('| J&F-Mean | J-Mean')
    assert float(row.split('|')[1]) == pytest.approx(
        expected['J&F-Mean'], abs=1e-4)


def test_results_missing_a_frame_are_named(repo, tmp_path, capsys):
    frames, masks = synthetic_video(4, (32, 48), 1)
    write_davis_sequences(str(tmp_path / 'd'), {'v': (frames, masks)})
    (tmp_path / 'r' / 'v').mkdir(parents=True)
    with pytest.raises(FileNotFoundError,
                       match='Results of "v" lack frame 00000'):
        evaluate_davis_results(str(tmp_path / 'r'), str(tmp_path / 'd'),
                               'ImageSets/val.txt')
    with pytest.raises(SystemExit, match='1'):
        run_tool(load_tool('tools/eval_davis.py').main, 'eval_davis.py', [
            str(tmp_path / 'r'), '--data-root', str(tmp_path / 'd'),
            '--ann-file', 'ImageSets/val.txt'
        ])
    err = capsys.readouterr().err
    assert err.startswith('eval_davis.py: error: Results of "v" lack frame '
                          '00000')
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match=r"\['w'\] are not in"):
        evaluate_davis_results(str(tmp_path / 'r'), str(tmp_path / 'd'),
                               'ImageSets/val.txt', sequences=['w'])


def test_davis2016_masks_score_as_results(davis2016, tmp_path):
    """DAVIS-2016's {0, 255} masks given as results are one object, as its
    annotations are (they once scored J&F 0: object 255 against object 1);
    what the results folder cannot hold is named."""
    results = tmp_path / 'r' / 'blackswan'
    shutil.copytree(davis2016 / 'Annotations' / '480p' / 'blackswan',
                    results)
    scores = evaluate_davis_results(str(tmp_path / 'r'), str(davis2016),
                                    'ImageSets/val.txt',
                                    sequences=['blackswan'])
    assert scores['J&F-Mean'] == 1.0
    cv2.imwrite(str(results / '00003.png'), np.zeros((480, 854, 3),
                                                     np.uint8) + 40)
    with pytest.raises(ValueError, match=r'^Result ".*00003\.png" is a '
                       'colour image'):
        evaluate_davis_results(str(tmp_path / 'r'), str(davis2016),
                               'ImageSets/val.txt', sequences=['blackswan'])
    (results / '00003.png').write_bytes(b'not a png')
    with pytest.raises(OSError, match=r'^Cannot read result ".*00003\.png"'):
        evaluate_davis_results(str(tmp_path / 'r'), str(davis2016),
                               'ImageSets/val.txt', sequences=['blackswan'])


@pytest.mark.parametrize('config, maps', [
    ('fc_davis.py', ['features']),
    ('sfc_davis.py', ['semantic', 'fc', 'sfc']),
])
def test_correspondence_maps_are_written(repo, davis2016, tmp_path, config,
                                         maps, capsys, monkeypatch):
    tool = load_tool('tools/visualize_correspondence.py')
    frames = tmp_path / 'frames'
    frames.mkdir()
    for name in ('00000.jpg', '00010.jpg'):
        img = cv2.imread(str(davis2016 / 'JPEGImages' / '480p' /
                             'blackswan' / name))
        cv2.imwrite(str(frames / name), cv2.resize(img, (216, 120)))
    out = tmp_path / 'maps'
    tool.main([
        str(frames / '00000.jpg'),
        str(frames / '00010.jpg'), '--point', '100', '60', '--out',
        str(out), '--config', config, '--device', 'cpu'
    ])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f'{m}.png' for m in ['source', *maps]] + ['panel.png'])
    heat = cv2.imread(str(out / f'{maps[-1]}.png'))
    assert heat.shape == (120, 216, 3)
    source = cv2.imread(str(out / 'source.png'))
    assert tuple(source[60, 100]) == (0, 0, 255)  # the pixel, in red
    capsys.readouterr()
    with pytest.raises(SystemExit, match='1'):
        run_tool(tool.main, 'visualize_correspondence.py', [
            str(frames / '00000.jpg'),
            str(frames / '00010.jpg'), '--point', '216', '0', '--out',
            str(tmp_path / 'x'), '--config', config, '--device', 'cpu'
        ])
    err = capsys.readouterr().err
    assert err.startswith('visualize_correspondence.py: error: Point '
                          '(x=216, y=0) lies outside the 216×120 source')
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / 'x').exists()
    # An empty frame, and a frame the host cannot encode (here: little
    # memory left), are one line each; the earlier maps stay as they were.
    from sfc_plugin.utils import memory
    (frames / 'empty.jpg').write_bytes(b'')
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for source, message in [('empty.jpg', 'Cannot decode frame'),
                            ('00000.jpg', 'need')]:
        if source == '00000.jpg':
            monkeypatch.setattr(memory, 'available_host_memory',
                                lambda: 2**20)
        with pytest.raises(SystemExit, match='1'):
            run_tool(tool.main, 'visualize_correspondence.py', [
                str(frames / source),
                str(frames / '00010.jpg'), '--point', '1', '1', '--out',
                str(out), '--config', config, '--device', 'cpu'
            ])
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_results_that_do_not_fit_the_sequence_are_named(tmp_path):
    frames, masks = synthetic_video(3, (32, 48), 1)
    write_davis_sequences(str(tmp_path / 'd'), {'v': (frames, masks)})
    results = tmp_path / 'r'

    def score():
        return evaluate_davis_results(str(results), str(tmp_path / 'd'),
                                      'ImageSets/val.txt')

    with pytest.raises(FileNotFoundError, match='Results folder ".*r" not '
                       'found'):
        score()
    results.mkdir()
    with pytest.raises(FileNotFoundError, match='Results of "v" not found: '
                       'no folder'):
        score()
    for t, mask in enumerate(masks):
        save_palette_png(mask, str(results / 'v' / f'{t:05d}.png'))
    save_palette_png(masks[0], str(results / 'v' / '00003.png'))
    with pytest.raises(ValueError, match='hold 1 frames the sequence lacks '
                       r'\(e.g. ".*00003.png"\)'):
        score()
    (results / 'v' / '00003.png').unlink()
    save_palette_png(masks[1][:16], str(results / 'v' / '00001.png'))
    with pytest.raises(ValueError, match='prediction ".*v/00001.png" '
                       r'\(16, 48\) and ground truth'):
        score()
    # PIL reads by content: a TIFF of int32 ids under a .png name.
    Image.fromarray(np.full((32, 48), -1, np.int32)).save(
        results / 'v' / '00001.png', format='TIFF')
    with pytest.raises(ValueError, match='00001.png" holds id -1'):
        score()
    (tmp_path / 'd' / 'ImageSets' / 'val.txt').write_bytes(b'\xff\xd8\xff')
    with pytest.raises(ValueError, match='val.txt" is not a text file'):
        score()
