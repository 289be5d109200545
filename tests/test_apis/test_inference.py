import json
import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from sfc_plugin.apis import (
    TrackingResultsWriter,
    inference_video,
    init_tracker,
    label_kind,
    track_video,
    tracker_config,
)
from sfc_plugin.apis.results_writer import clear_abandoned_staging
from sfc_plugin.datasets import (
    open_video,
    synthetic_video,
    write_davis_sequences,
)
from sfc_plugin.evaluation import evaluate_davis_results
from sfc_plugin.ops import matching_kernel
from sfc_plugin.utils.fileio import save_palette_png


@pytest.fixture(scope='module')
def video(tmp_path_factory):
    """A generated 8-frame, 3-object video in the DAVIS layout."""
    root = tmp_path_factory.mktemp('davis')
    frames, masks = synthetic_video(8, (64, 112), 3, seed=7)
    write_davis_sequences(str(root), {'clip': (frames, masks)})
    return dict(
        root=root,
        frames=root / 'JPEGImages' / '480p' / 'clip',
        first=root / 'Annotations' / '480p' / 'clip' / '00000.png',
        masks=masks,
        images=frames)


def leftovers(parent):
    """Staging folders of runs: none may survive a failed run."""
    return [p for p in os.listdir(parent) if '.partial-' in p]


def run(video, out, **kwargs):
    kwargs.setdefault('progress', False)
    return track_video(str(video['frames']), str(video['first']), str(out),
                       **kwargs)


def test_tracking_writes_davis_results_and_a_summary(video, tmp_path):
    out = tmp_path / 'results' / 'clip'
    summary = run(video, out)
    names = sorted(os.listdir(out))
    assert names == [f'{t:05d}.png' for t in range(8)] + [
        'overlay.mp4', 'summary.json'
    ]
    first = Image.open(out / '00000.png')
    assert first.mode == 'P'
    assert np.array_equal(np.array(first), video['masks'][0])
    assert summary == json.load(open(out / 'summary.json'))
    assert summary['complete'] and summary['frames'] == 8
    assert summary['label_kind'] == 'mask'
    assert summary['frame_size'] == [64, 112]
    assert summary['propagator'] == dict(topk=10, radius=12,
                                         context_frames=20, temperature=0.05)
    assert summary['frames_per_second'] > 0 and summary['peak_rss_mib'] > 0
    # The first frame's one-time costs apart: it ends before the whole run,
    # and the 7 frames after it take the rest of the time at most (both
    # times are rounded to the millisecond).
    assert 0 < summary['first_frame_seconds'] < summary['seconds']
    assert summary['frames_per_second_after_first'] + 0.001 >= 7 / (
        summary['seconds'] - summary['first_frame_seconds'] + 0.0011)
    assert summary['matching_kernel'] == matching_kernel(torch.float32,
                                                         'cpu')
    overlay = cv2.VideoCapture(str(out / 'overlay.mp4'))
    assert overlay.get(cv2.CAP_PROP_FRAME_COUNT) == 8
    assert overlay.get(cv2.CAP_PROP_FRAME_WIDTH) == 112
    # The results folder is one the DAVIS evaluation reads.
    scores = evaluate_davis_results(str(tmp_path / 'results'),
                                    str(video['root']), 'ImageSets/val.txt')
    assert 0 <= scores['J&F-Mean'] <= 1
    assert leftovers(tmp_path / 'results') == []


def test_random_baseline_is_the_same_every_run(video):
    cfg = tracker_config('fc_davis.py')
    preds = []
    for _ in range(2):
        model = init_tracker(cfg, 'cpu')
        preds.append([
            f.pred for f in inference_video(
                model, open_video(str(video['frames'])),
                str(video['first']))
        ])
    assert all(np.array_equal(a, b) for a, b in zip(*preds))
    assert len(preds[0]) == 8 and preds[0][3].shape == (64, 112)


def test_inference_video_gives_each_frame_in_order(video):
    model = init_tracker(tracker_config('fc_davis.py'), 'cpu')
    frames = list(
        inference_video(model, open_video(str(video['frames'])),
                        str(video['first'])))
    assert [f.name for f in frames] == [f'{t:05d}' for t in range(8)]
    assert frames[0].image.shape == (64, 112, 3)
    assert frames[0].image.dtype == np.uint8
    # The image is the decoded frame file.
    assert np.array_equal(frames[5].image,
                          cv2.imread(str(video['frames'] / '00005.jpg')))
    assert frames[5].pred.dtype == np.uint8
    assert set(np.unique(frames[5].pred)) <= {0, 1, 2, 3}


def logged_steps(model, log, fail_at=None):
    """Has ``model.test_step`` log each frame it starts (and fail at one)."""
    step = model.test_step

    def logged(data):
        frame_id = data['data_samples'][0].frame_id
        log.append(('step', frame_id))
        if frame_id == fail_at:
            raise RuntimeError(f'frame {frame_id} broke')
        return step(data)

    model.test_step = logged


@pytest.mark.parametrize('in_flight', [1, 3, 20])
def test_frames_in_flight_keep_the_order_and_the_predictions(
        video, in_flight):
    """Frame t is handed out once frames up to t + in_flight have started
    (or the video has ended), and nothing else changes."""
    def frames(in_flight, log):
        model = init_tracker(tracker_config('fc_davis.py'), 'cpu')
        logged_steps(model, log)
        out = []
        for frame in inference_video(model, open_video(str(video['frames'])),
                                     str(video['first']),
                                     frames_in_flight=in_flight):
            log.append(('yield', int(frame.name)))
            out.append(frame)
        return out

    log = []
    got, want = frames(in_flight, log), frames(0, [])
    for t in range(8):
        before = log[:log.index(('yield', t))]
        assert ('step', min(t + in_flight, 7)) in before
        assert ('step', t + in_flight + 1) not in before
    assert [f.name for f in got] == [f.name for f in want]
    for a, b in zip(got, want):
        assert np.array_equal(a.pred, b.pred)
        assert np.array_equal(a.image, b.image)
    # Not the default on a CPU: there a frame's work is done when its call
    # returns, and nothing would overlap.
    log = []
    frames(None, log)
    assert log[:4] == [('step', 0), ('yield', 0), ('step', 1), ('yield', 1)]


@pytest.mark.parametrize('in_flight', [0, 2])
def test_frames_before_a_failing_frame_come_out_before_its_error(
        video, in_flight):
    model = init_tracker(tracker_config('fc_davis.py'), 'cpu')
    logged_steps(model, [], fail_at=5)
    names = []
    with pytest.raises(RuntimeError, match='frame 5 broke'):
        for frame in inference_video(model, open_video(str(video['frames'])),
                                     str(video['first']),
                                     frames_in_flight=in_flight):
            names.append(frame.name)
    assert names == [f'{t:05d}' for t in range(5)]


class BreaksAt:
    """A frame source that cannot be read from frame ``index`` on."""

    def __init__(self, reader, index):
        self._reader, self._index = reader, index

    def __getattr__(self, name):
        return getattr(self._reader, name)

    def __iter__(self):
        for item in self._reader:
            if item['frame_id'] == self._index:
                raise RuntimeError(f'frame {self._index} is unreadable')
            yield item


@pytest.mark.parametrize('in_flight', [0, 2])
def test_frames_before_an_unreadable_frame_come_out_before_its_error(
        video, in_flight):
    """And a consumer that stops before it never sees the error (what
    track_video's max_frames relies on), whatever is in flight."""
    model = init_tracker(tracker_config('fc_davis.py'), 'cpu')

    def frames():
        return inference_video(
            model, BreaksAt(open_video(str(video['frames'])), 5),
            str(video['first']), frames_in_flight=in_flight)

    names = []
    with pytest.raises(RuntimeError, match='frame 5 is unreadable'):
        for frame in frames():
            names.append(frame.name)
    assert names == [f'{t:05d}' for t in range(5)]
    stream = frames()
    assert [next(stream).name for _ in range(5)] == names
    stream.close()


def test_a_consumer_may_stop_with_frames_in_flight(video):
    model = init_tracker(tracker_config('fc_davis.py'), 'cpu')
    log = []
    logged_steps(model, log)
    frames = inference_video(model, open_video(str(video['frames'])),
                             str(video['first']), frames_in_flight=2)
    assert [next(frames).name for _ in range(3)] == ['00000', '00001',
                                                     '00002']
    frames.close()
    assert log[-1] == ('step', 4)
    # The model is left as it was: its predictions come to the host.
    assert not model._results_on_device


@pytest.mark.parametrize('value', [-1, 1.5, True, '1', float('nan')])
def test_frames_in_flight_is_checked(video, value):
    model = init_tracker(tracker_config('fc_davis.py'), 'cpu')
    with pytest.raises(ValueError, match='frames_in_flight'):
        next(inference_video(model, open_video(str(video['frames'])),
                             str(video['first']), frames_in_flight=value))


def test_the_configs_cudnn_benchmark_holds_during_the_run(
        video, tmp_path, monkeypatch):
    """env_cfg.cudnn_benchmark, as mmengine's Runner applies it for the
    same config; the process's setting is restored after."""
    import torch

    import sfc_plugin.apis.inference as api
    seen = []
    inference = api.inference_video

    def spy(*args, **kwargs):
        seen.append(torch.backends.cudnn.benchmark)
        yield from inference(*args, **kwargs)

    monkeypatch.setattr(api, 'inference_video', spy)
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)
    run(video, tmp_path / 'a', overlay=False)
    assert seen == [True] and torch.backends.cudnn.benchmark is False
    run(video, tmp_path / 'b', overlay=False,
        cfg_options={'env_cfg.cudnn_benchmark': False})
    assert seen == [True, False]


def write_video(path, images, fourcc='mp4v', fps=12):
    """A video file of BGR frames."""
    h, w = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps,
                             (w, h))
    for img in images:
        writer.write(img)
    writer.release()
    return path


def test_video_file_source(video, tmp_path):
    path = write_video(tmp_path / 'clip.mp4', video['images'])
    summary = track_video(str(path), str(video['first']),
                          str(tmp_path / 'out'), progress=False,
                          overlay=False)
    assert summary['frames'] == 8
    assert sorted(os.listdir(tmp_path / 'out')) == [
        f'{t:05d}.png' for t in range(8)
    ] + ['summary.json']


@pytest.mark.parametrize('interrupt_at', [None, 3])
def test_each_frame_is_decoded_once_and_the_decoder_released(
        video, tmp_path, monkeypatch, interrupt_at):
    """Frame 0 was decoded twice: once to check it before the output
    opened, again for the run. Whether the run ends or is interrupted,
    the prefetch thread stops and every decoder opened is released."""
    import threading

    from sfc_plugin.datasets.video_reader import VideoFileReader
    path = write_video(tmp_path / 'clip.mp4', video['images'])
    reads, released = [], []

    class CountingCapture:
        def __init__(self, capture):
            self.capture = capture

        def read(self):
            reads.append(int(self.capture.get(cv2.CAP_PROP_POS_FRAMES)))
            return self.capture.read()

        def release(self):
            released.append(1)
            self.capture.release()

        def __getattr__(self, name):
            return getattr(self.capture, name)

    opened = []
    open_capture = VideoFileReader._open

    def counted_open(self):
        opened.append(1)
        return CountingCapture(open_capture(self))

    monkeypatch.setattr(VideoFileReader, '_open', counted_open)
    write = TrackingResultsWriter.write
    written = []

    def write_or_stop(self, *args):
        written.append(1)
        if len(written) == interrupt_at:
            raise KeyboardInterrupt
        write(self, *args)

    monkeypatch.setattr(TrackingResultsWriter, 'write', write_or_stop)
    out = tmp_path / 'out'
    if interrupt_at is None:
        assert track_video(str(path), str(video['first']), str(out),
                           progress=False, overlay=False)['frames'] == 8
        # The reader's probe of frame 0 when opened, then one pass.
        assert reads == [0] + list(range(9))  # the 9th read finds the end
    else:
        with pytest.raises(KeyboardInterrupt):
            track_video(str(path), str(video['first']), str(out),
                        progress=False, overlay=False)
        assert not out.exists()
        assert reads[:2] == [0, 0] and sorted(set(reads)) == reads[1:]
    assert len(opened) == len(released) == 2
    assert not [t for t in threading.enumerate()
                if t.name == 'frame-prefetch']


def test_keypoints_are_tracked_into_json_lines(video, tmp_path):
    joints = [[30.0, 20.0], [80.5, 40.0], [5.0, 60.0]]
    path = tmp_path / 'joints.json'
    path.write_text(json.dumps({'keypoints': joints}))
    summary = track_video(
        str(video['frames']), str(path), str(tmp_path / 'out'),
        config='fc_jhmdb.py', progress=False)
    assert summary['label_kind'] == 'keypoints'
    lines = (tmp_path / 'out' / 'keypoints.jsonl').read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r['frame'] for r in records] == [f'{t:05d}' for t in range(8)]
    assert records[0]['keypoints'] == joints
    for r in records[1:]:
        xy = np.array(r['keypoints'])
        assert xy.shape == (3, 2)
        assert (xy >= -0.5).all() and (xy[:, 0] <= 111.5).all()
    assert (tmp_path / 'out' / 'overlay.mp4').is_file()


def test_part_maps_keep_every_class(video, tmp_path):
    parts = video['masks'][0].copy()
    parts[parts == 3] = 7  # ids need not be contiguous
    path = tmp_path / 'parts.png'
    save_palette_png(parts, str(path))
    summary = track_video(
        str(video['frames']), str(path), str(tmp_path / 'out'),
        num_classes=10, progress=False, overlay=False)
    assert summary['label_kind'] == 'parts'
    pred = np.array(Image.open(tmp_path / 'out' / '00004.png'))
    assert set(np.unique(pred)) <= {0, 1, 2, 7}
    with pytest.raises(ValueError, match='holds class id 7; num_classes=5'):
        track_video(str(video['frames']), str(path), str(tmp_path / 'o2'),
                    num_classes=5, progress=False)


def test_a_backend_model_is_never_silently_ignored(tmp_path):
    from mmengine.config import Config

    from sfc_plugin.apis import apply_backend
    model = tmp_path / 'enc.onnx'
    model.write_bytes(b'onnx')
    cfg = Config(dict(model=dict(backend=None)))
    for backend in (None, 'torch'):
        with pytest.raises(ValueError, match='backend model'):
            apply_backend(cfg, backend, str(model))
    apply_backend(cfg, 'onnxruntime', model)
    assert cfg.model.backend == dict(type='onnxruntime', model=str(model))
    apply_backend(cfg, 'torch')
    assert cfg.model.backend is None


def test_label_kinds():
    assert label_kind('a/0.png') == 'mask'
    assert label_kind('a/0.PNG', num_classes=20) == 'parts'
    assert label_kind('k.json') == 'keypoints'
    with pytest.raises(ValueError, match='keypoints; a number of classes'):
        label_kind('k.json', num_classes=3)
    with pytest.raises(ValueError, match='expected a PNG'):
        label_kind('labels.txt')


def bad_input_is_refused_before_any_output(video, tmp_path, source, first,
                                           match, error=ValueError):
    out = tmp_path / 'results' / 'clip'
    with pytest.raises(error, match=match):
        track_video(str(source), str(first), str(out), progress=False)
    assert not out.exists()
    assert not (tmp_path / 'results').exists() or leftovers(
        tmp_path / 'results') == []


def test_mask_of_another_size_is_refused(video, tmp_path):
    small = tmp_path / 'small.png'
    save_palette_png(video['masks'][0][:32], str(small))
    bad_input_is_refused_before_any_output(
        video, tmp_path, video['frames'], small,
        'small.png" is 112×32 but frame .*00000.jpg" is 112×64')


def test_empty_first_mask_is_refused(video, tmp_path):
    empty = tmp_path / 'empty.png'
    save_palette_png(np.zeros((64, 112), np.uint8), str(empty))
    bad_input_is_refused_before_any_output(
        video, tmp_path, video['frames'], empty,
        'empty.png" hold no object: every pixel is 0')


def test_frame_folder_with_a_gap_is_refused(video, tmp_path):
    folder = tmp_path / 'frames'
    folder.mkdir()
    for t in (0, 1, 2, 4):
        os.symlink(video['frames'] / f'{t:05d}.jpg',
                   folder / f'{t:05d}.jpg')
    bad_input_is_refused_before_any_output(video, tmp_path, folder,
                                           video['first'], 'frame 3 missing')


def test_frame_folder_with_mixed_sizes_is_refused(video, tmp_path):
    folder = tmp_path / 'frames'
    folder.mkdir()
    for t in range(3):
        os.symlink(video['frames'] / f'{t:05d}.jpg',
                   folder / f'{t:05d}.jpg')
    cv2.imwrite(str(folder / '00003.jpg'), np.zeros((64, 100, 3), np.uint8))
    bad_input_is_refused_before_any_output(video, tmp_path, folder,
                                           video['first'],
                                           'mixes frame sizes')


def test_labels_that_are_not_regular_files_are_refused(video, tmp_path):
    """A FIFO blocks whoever opens it until a writer comes: never read."""
    fifo = tmp_path / 'first.png'
    os.mkfifo(fifo)
    bad_input_is_refused_before_any_output(
        video, tmp_path, video['frames'], fifo,
        'first.png" are not a regular file')
    anchors = tmp_path / 'anchors'
    anchors.mkdir()
    os.mkfifo(anchors / '00003.png')
    with pytest.raises(ValueError, match='00003.png" is not a regular file'):
        run(video, tmp_path / 'out', anchors=str(anchors))


def test_video_whose_end_cannot_be_checked_is_not_complete(video, tmp_path):
    """A raw MJPEG stream states no frame count: a cut one decodes like a
    whole one, so no run on it is called complete."""
    stream = tmp_path / 'clip.mjpeg'
    with open(stream, 'wb') as f:
        for image in video['images'][:4]:
            f.write(cv2.imencode('.jpg', image)[1].tobytes())
    summary = track_video(str(stream), str(video['first']),
                          str(tmp_path / 'out'), progress=False,
                          overlay=False)
    assert summary['complete'] is False and summary['frames'] == 4
    assert summary['source_frames'] is None
    assert summary['incomplete_reason'].startswith(
        'the video file states no frame count')


def test_unreadable_video_is_refused(video, tmp_path):
    bad = tmp_path / 'clip.avi'
    bad.write_text('this is not a video')
    bad_input_is_refused_before_any_output(video, tmp_path, bad,
                                           video['first'],
                                           'Cannot read video', OSError)


def test_output_folder_holding_results_is_kept(video, tmp_path):
    out = tmp_path / 'results' / 'clip'
    out.mkdir(parents=True)
    (out / '00000.png').write_bytes(b'earlier result')
    with pytest.raises(FileExistsError, match='already holds files'):
        run(video, out)
    # Files that are not a result of this tool are never replaced.
    with pytest.raises(FileExistsError,
                       match='not a previous tracking result'):
        run(video, out, overwrite=True)
    assert (out / '00000.png').read_bytes() == b'earlier result'
    (out / '00000.png').unlink()
    run(video, out, overlay=False)
    before = (out / 'summary.json').read_bytes()
    with pytest.raises(FileExistsError, match='already holds files'):
        run(video, out)
    # A file put beside a result (even one named like a result) is the
    # user's: --overwrite would delete it, so the folder is refused.
    (out / 'drawing.png').write_bytes(b'mine')
    with pytest.raises(FileExistsError, match='"drawing.png"'):
        run(video, out, overwrite=True, overlay=False)
    assert (out / 'drawing.png').read_bytes() == b'mine'
    (out / 'drawing.png').unlink()
    # --overwrite replaces a previous result, on success only.
    run(video, out, overwrite=True, overlay=False)
    assert len(os.listdir(out)) == 9
    assert json.loads((out / 'summary.json').read_text())['files'] == sorted(
        os.listdir(out))
    assert (out / 'summary.json').read_bytes() != before
    assert leftovers(tmp_path / 'results') == []
    assert [p for p in os.listdir(tmp_path / 'results')] == ['clip']


def test_staging_like_folder_without_owner_is_left_alone(tmp_path):
    # Named like a killed run's staging folder, but without the owner file
    # that the writer puts there first: a user's folder, never removed.
    mine = tmp_path / '.clip.partial-backup'
    mine.mkdir()
    (mine / 'thesis.txt').write_text('mine')
    clear_abandoned_staging(str(tmp_path / 'clip'), {})
    assert (mine / 'thesis.txt').read_text() == 'mine'


def test_interrupted_run_leaves_nothing(video, tmp_path, monkeypatch):
    out = tmp_path / 'results' / 'clip'
    write = TrackingResultsWriter.write
    calls = []

    def interrupt_at_frame_4(self, *args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        write(self, *args)

    monkeypatch.setattr(TrackingResultsWriter, 'write', interrupt_at_frame_4)
    with pytest.raises(KeyboardInterrupt):
        run(video, out)
    assert not out.exists() and leftovers(tmp_path / 'results') == []


def test_writer_failure_is_reported_and_cleaned_up(tmp_path):
    out = tmp_path / 'out'
    with pytest.raises(OSError, match='Writing results to .*out" '
                       'failed'):
        with TrackingResultsWriter(str(out), 'mask') as writer:
            image = np.zeros((8, 8, 3), np.uint8)
            writer.write('00000', image, np.zeros((8, 8), np.uint8))
            # An overlay of another size than the prediction fails.
            writer.write('00001', image, np.zeros((4, 4), np.uint8))
            writer.commit({})
    assert not out.exists() and leftovers(tmp_path) == []


def test_writer_results_are_readable_by_others(tmp_path):
    with TrackingResultsWriter(str(tmp_path / 'out'), 'mask') as writer:
        writer.write('00000', np.zeros((8, 8, 3), np.uint8),
                     np.ones((8, 8), np.uint8))
        writer.commit(dict(frames=1))
    mode = os.stat(tmp_path / 'out').st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o777 & ~umask


def test_onnxruntime_backend_tracks_like_torch(video, tmp_path):
    """The same weights through PyTorch and their ONNX export agree."""
    import torch

    from sfc_plugin.deploy import export_encoder

    checkpoint = tmp_path / 'fc.pth'
    model = init_tracker(tracker_config('fc_davis.py'), 'cpu')
    torch.save(model.encoder.backbone.state_dict(), checkpoint)
    onnx_path = tmp_path / 'fc.onnx'
    export_encoder(tracker_config('fc_davis.py'), str(onnx_path),
                   [str(video['frames'])], checkpoint=str(checkpoint))
    preds = {}
    for backend in ('torch', 'onnxruntime'):
        summary = run(video, tmp_path / backend, checkpoint=str(checkpoint),
                      backend=backend, overlay=False,
                      backend_model=str(onnx_path) if backend ==
                      'onnxruntime' else None)
        assert summary['backend']['type'] == backend
        preds[backend] = np.stack([
            np.array(Image.open(tmp_path / backend / f'{t:05d}.png'))
            for t in range(8)
        ])
    assert (preds['torch'] > 0).mean() > 0.05
    assert (preds['torch'] == preds['onnxruntime']).mean() > 0.995
    with pytest.raises(ValueError, match='needs a backend model'):
        run(video, tmp_path / 'x', backend='onnxruntime')
    with pytest.raises(FileNotFoundError, match='Backend model not found'):
        run(video, tmp_path / 'x', backend='tensorrt',
            backend_model=str(tmp_path / 'none.engine'))
    assert not (tmp_path / 'x').exists()


def test_writer_rechecks_the_output_folder_at_commit(tmp_path):
    """A folder that appeared while the run went on is never replaced."""
    out = tmp_path / 'out'
    with pytest.raises(FileExistsError, match='already holds files'):
        with TrackingResultsWriter(str(out), 'mask', overlay=False) as writer:
            writer.write('00000', np.zeros((8, 8, 3), np.uint8),
                         np.ones((8, 8), np.uint8))
            out.mkdir()
            (out / 'notes.txt').write_text('written meanwhile')
            writer.commit(dict(frames=1))
    assert os.listdir(out) == ['notes.txt'] and leftovers(tmp_path) == []
    with pytest.raises(FileExistsError, match='not a previous tracking'):
        with TrackingResultsWriter(str(tmp_path / 'b'), 'mask', overlay=False,
                                   overwrite=True) as writer:
            (tmp_path / 'b').mkdir()
            (tmp_path / 'b' / 'notes.txt').write_text('written meanwhile')
            writer.commit(dict(frames=0))
    assert os.listdir(tmp_path / 'b') == ['notes.txt']


def test_writer_failing_to_close_keypoints_names_it_and_cleans_up(
        tmp_path, monkeypatch):
    """A full disk often shows only when the file is flushed on close."""
    out = tmp_path / 'out'
    with pytest.raises(OSError, match='keypoints.jsonl" failed: No space'):
        with TrackingResultsWriter(str(out), 'keypoints',
                                   overlay=False) as writer:

            def full_disk():
                raise OSError(28, 'No space left on device')

            monkeypatch.setattr(writer._keypoints, 'close', full_disk)
            writer.write('00000', np.zeros((8, 8, 3), np.uint8),
                         np.ones((2, 2), np.float32))
            writer.commit(dict(frames=1))
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize('options, match', [
    ({'model': 5}, 'does not define an SFCTracker model'),
    ({'model.propagator': None}, 'model.propagator must be a dict with a '
     'type .* got None'),
    ({'model.backend': 'xyz'}, "model.backend must be a dict with a type .* "
     "got 'xyz'"),
    ({'model.encoder.type': 5}, 'model.encoder must be a dict with '
     'a type'),
])
def test_config_parts_that_cannot_be_built_are_named(options, match):
    """Overrides put anything anywhere; these were AttributeErrors called
    unexpected."""
    with pytest.raises(ValueError, match=match):
        tracker_config('fc_davis.py', cfg_options=options)


@pytest.mark.parametrize('options, message', [
    ({'model.propagator.topK': 5}, 'LabelPropagator takes no setting "topK": '
     'remove or correct model.propagator.topK (from the config or '
     '--cfg-options)'),
    ({'model.encoder.backbone.dpeth': 18}, 'ResNet takes no setting "dpeth": '
     'remove or correct model.encoder.backbone.dpeth'),
])
def test_a_setting_no_part_takes_is_named_by_its_key(options, message):
    cfg = tracker_config('fc_davis.py', cfg_options=options)
    with pytest.raises(ValueError) as err:
        init_tracker(cfg, 'cpu')
    assert str(err.value).startswith(message)


@pytest.mark.parametrize('options, message', [
    ({'env_cfg': 5}, "env_cfg must be a dict of environment settings "
     "(mmengine's), got 5"),
    ({'env_cfg.cudnn_benchmark': 'no'}, 'env_cfg.cudnn_benchmark must be '
     "True or False, got 'no'"),
    ({'env_cfg.cudnn_benchmark': 2}, 'env_cfg.cudnn_benchmark must be True '
     'or False, got 2'),
])
def test_environment_settings_are_checked_before_any_output(
        video, tmp_path, options, message):
    """env_cfg=5 was an 'unexpected AttributeError', after the output
    folder had been opened."""
    with pytest.raises(ValueError) as err:
        run(video, tmp_path / 'out', cfg_options=options, overlay=False)
    assert str(err.value) == message
    assert not (tmp_path / 'out').exists() and leftovers(tmp_path) == []


def test_cudnn_benchmark_setting_reads_as_mmengine_does():
    from sfc_plugin.apis.inference import cudnn_benchmark_setting
    assert cudnn_benchmark_setting({}) is False
    assert cudnn_benchmark_setting({'env_cfg': {}}) is False
    assert cudnn_benchmark_setting(
        {'env_cfg': {'cudnn_benchmark': 1}}) is True
    assert cudnn_benchmark_setting(
        {'env_cfg': {'cudnn_benchmark': False}}) is False


@pytest.mark.parametrize('device, message', [
    ('cpu:1', 'Device "cpu:1": the CPU is one device (use cpu)'),
    ('tpu', 'Device "tpu" is not a device'),
    ('mps', 'Device "mps": sfc_plugin runs on cpu or cuda'),
    ('', 'Device "" is empty: give cpu, cuda or cuda:N'),
])
def test_devices_are_checked(device, message):
    with pytest.raises(ValueError) as err:
        init_tracker(tracker_config('fc_davis.py'), device)
    assert str(err.value).startswith(message)


def test_output_under_a_file_is_named(video, tmp_path):
    (tmp_path / 'a_file').write_text('x')
    with pytest.raises(NotADirectoryError, match='a_file" .*is a file, not '
                       'a folder'):
        run(video, tmp_path / 'a_file' / 'out')


def test_keypoints_nested_too_deep_are_named(video, tmp_path):
    deep = tmp_path / 'deep.json'
    deep.write_text('[' * 100000 + ']' * 100000)
    with pytest.raises(OSError, match='Cannot read keypoints ".*deep.json": '
                       'maximum recursion depth'):
        track_video(str(video['frames']), str(deep), str(tmp_path / 'o'),
                    progress=False)
