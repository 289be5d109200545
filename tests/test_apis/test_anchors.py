"""Anchor frames through track_video and tools/track.py."""
import subprocess

import cv2
import numpy as np
import pytest
from PIL import Image

from sfc_plugin.apis import track_video
from sfc_plugin.datasets import synthetic_video, write_davis_sequences
from sfc_plugin.utils.fileio import save_palette_png

from .test_inference import leftovers, write_video


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
    """A generated 10-frame, 3-object video; object 3 is left out of the
    first frame's labels (it "enters" at the anchor of frame 4)."""
    root = tmp_path_factory.mktemp('davis')
    frames, masks = synthetic_video(10, (64, 112), 3, seed=11)
    write_davis_sequences(str(root), {'clip': (frames, masks)})
    first = root / 'first.png'
    save_palette_png(np.where(masks[0] == 3, 0, masks[0]), str(first))
    anchors = root / 'anchors'
    anchors.mkdir()
    save_palette_png(masks[4], str(anchors / '00004.png'))
    return dict(root=root, frames=root / 'JPEGImages' / '480p' / 'clip',
                first=first, anchors=anchors, masks=masks, images=frames)


def run(clip, out, **kwargs):
    kwargs.setdefault('progress', False)
    return track_video(str(clip['frames']), str(clip['first']), str(out),
                       **kwargs)


def read(out, t):
    return np.array(Image.open(out / f'{t:05d}.png'))


def test_anchor_brings_in_a_new_object_and_replaces_its_frame(clip,
                                                              tmp_path):
    out = tmp_path / 'anchored'
    summary = run(clip, out, anchors=clip['anchors'])
    assert summary['complete'] and summary['frames'] == 10
    assert summary['anchors'] == dict(given=1, used=['00004'], complete=[])
    assert np.array_equal(read(out, 4), clip['masks'][4])
    assert all(3 not in read(out, t) for t in range(4))
    # A random-init network (seeded) tracks every object loosely here;
    # the new one as well as the others, where before it was not at all.
    for t in range(5, 10):
        new, pred = clip['masks'][t] == 3, read(out, t) == 3
        assert (new & pred).sum() / (new | pred).sum() > 0.1, t
    # The overlay marks the anchor frame (a yellow border).
    video = cv2.VideoCapture(str(out / 'overlay.mp4'))
    drawn = []
    for _ in range(5):
        ok, image = video.read()
        assert ok
        drawn.append(image)
    video.release()
    border = drawn[4][:2].reshape(-1, 3).mean(0)  # BGR
    assert border[0] < 100 and border[1] > 180 and border[2] > 180
    assert drawn[3][:2].reshape(-1, 3).mean(0)[1] < 180


def test_without_anchors_nothing_changes(clip, tmp_path):
    """An anchor only changes frames from its own on; no anchors, the
    paper protocol's masks."""
    plain = tmp_path / 'plain'
    run(clip, plain)
    anchored = tmp_path / 'anchored'
    run(clip, anchored, anchors={'00004': clip['anchors'] / '00004.png'})
    for t in range(4):
        assert np.array_equal(read(plain, t), read(anchored, t)), t
    assert not np.array_equal(read(plain, 4), read(anchored, 4))


def test_complete_anchor_ends_the_objects_it_lacks(clip, tmp_path):
    only_one = tmp_path / 'only_one.png'
    save_palette_png(np.where(clip['masks'][3] == 1, 1, 0), str(only_one))
    out = tmp_path / 'out'
    summary = run(clip, out, anchors={3: dict(labels=only_one,
                                              complete=True)})
    assert summary['anchors']['complete'] == [3]
    for t in range(4, 10):
        assert set(np.unique(read(out, t))) <= {0, 1}, t


def test_anchors_from_a_video_file_name_frames_by_index(clip, tmp_path):
    path = write_video(tmp_path / 'clip.avi', clip['images'], 'MJPG')
    out = tmp_path / 'out'
    summary = track_video(str(path), str(clip['first']), str(out),
                          anchors=clip['anchors'], progress=False)
    assert summary['anchors']['used'] == ['00004']
    assert np.array_equal(read(out, 4), clip['masks'][4])


@pytest.mark.parametrize('name, content, match', [
    ('00099.png', 'mask', 'names no frame'),
    ('00000.png', 'mask', 'is frame 0'),
    ('00004.png', 'small', r'is 112×32 but frame .*00004.jpg'),
    ('00004.jpg', 'jpeg', 'JPEG'),
    ('notes.txt', 'text', 'no label image'),
])
def test_bad_anchors_are_refused_before_any_work(clip, tmp_path, name,
                                                 content, match):
    folder = tmp_path / 'anchors'
    folder.mkdir()
    mask = clip['masks'][4]
    if content == 'mask':
        save_palette_png(mask, str(folder / name))
    elif content == 'small':
        save_palette_png(mask[:32], str(folder / name))
    elif content == 'jpeg':
        Image.fromarray(mask * 80).save(folder / name, quality=95)
    else:
        (folder / name).write_text('fix frame 4')
    out = tmp_path / 'results' / 'clip'
    with pytest.raises(ValueError, match=match):
        run(clip, out, anchors=folder)
    assert not out.exists()
    assert not (tmp_path / 'results').exists() or leftovers(
        tmp_path / 'results') == []


def test_anchor_mapping_errors_name_the_anchor(clip, tmp_path):
    anchor = clip['anchors'] / '00004.png'
    for anchors, match in [({-2: anchor}, 'before frame 0'),
                           ({12: anchor}, 'has 10 frames'),
                           ({4: anchor, '00004': anchor}, 'Two anchors'),
                           ({5: tmp_path / 'none.png'}, 'not found')]:
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            run(clip, tmp_path / 'out', anchors=anchors)
    with pytest.raises(ValueError, match='output'):
        run(clip, clip['anchors'] / 'out', anchors=clip['anchors'])


def test_track_tool_takes_an_anchor_folder(clip, tmp_path, python, repo,
                                           subprocess_env):
    out = tmp_path / 'out'
    proc = subprocess.run([
        python, str(repo / 'tools' / 'track.py'), str(clip['frames']),
        str(clip['first']), '--out', str(out), '--anchors',
        str(clip['anchors']), '--quiet', '--no-overlay'
    ], env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert 'Anchors: 1 of 1 used (00004)' in proc.stdout
    assert np.array_equal(read(out, 4), clip['masks'][4])
    bad = subprocess.run([
        python, str(repo / 'tools' / 'track.py'), str(clip['frames']),
        str(clip['first']), '--out', str(tmp_path / 'bad'), '--anchors',
        str(tmp_path / 'nope')
    ], env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        f'track.py: error: Anchor folder not found: "{tmp_path / "nope"}"']


def test_keypoint_anchor_of_another_count_is_refused_before_any_work(
        clip, tmp_path):
    import json
    first = tmp_path / 'first.json'
    first.write_text(json.dumps([[10, 20], [30, 40], [50, 30]]))
    folder = tmp_path / 'anchors'
    folder.mkdir()
    (folder / '00004.json').write_text(json.dumps([[11, 21], [31, 41]]))
    out = tmp_path / 'results' / 'clip'
    with pytest.raises(ValueError, match='00004.json" holds 2 keypoints; the '
                       "first frame's labels hold 3"):
        track_video(str(clip['frames']), str(first), str(out),
                    anchors=folder, progress=False)
    assert not (tmp_path / 'results').exists() or leftovers(
        tmp_path / 'results') == []
