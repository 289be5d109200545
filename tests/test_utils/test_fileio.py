"""sfc_plugin.utils.fileio: writes that are checked."""
import os

import cv2
import numpy as np
import pytest

from sfc_plugin.utils.fileio import (
    VerifiedVideoWriter,
    check_output_location,
    check_writable_dir,
    check_writable_file,
    remove_file,
    replace_folder,
)


@pytest.mark.parametrize('height, width', [(17, 33), (16, 33), (17, 32),
                                           (16, 32)])
def test_video_keeps_every_pixel_of_odd_sizes(tmp_path, height, width):
    """mp4v cropped 33×17 frames to 32×16; they are padded instead."""
    path = tmp_path / 'v.mp4'
    writer = VerifiedVideoWriter(path, 10)
    frame = np.full((height, width, 3), 200, np.uint8)
    for _ in range(3):
        writer.write(frame)
    writer.close()
    capture = cv2.VideoCapture(str(path))
    ok, first = capture.read()
    capture.release()
    assert ok and first.shape == (height + height % 2, width + width % 2, 3)
    # The picture is all there, the padding black (lossy, so roughly).
    assert first[:height, :width].mean() > 150
    assert writer.frame_size == (width, height)


def test_video_of_another_size_than_written_fails(tmp_path):
    writer = VerifiedVideoWriter(tmp_path / 'v.mp4', 10)
    writer.write(np.zeros((16, 32, 3), np.uint8))
    writer.close(verify=False)
    writer.encoded_size = (64, 16)
    with pytest.raises(OSError, match='its frames are 32×16, 64×16 were '
                       'written'):
        writer.verify()


def test_remove_file_takes_files_only(tmp_path):
    remove_file(tmp_path / 'absent.json')
    (tmp_path / 'old.json').write_text('{}')
    remove_file(tmp_path / 'old.json')
    assert not (tmp_path / 'old.json').exists()
    with pytest.raises(IsADirectoryError, match='is a folder'):
        remove_file(tmp_path)


def test_replace_folder_swaps_whole_folders(tmp_path):
    target, staging = tmp_path / 'out', tmp_path / '.out.partial'
    staging.mkdir()
    (staging / 'new.png').write_text('new')
    replace_folder(staging, target)  # nothing to replace
    assert [p.name for p in target.iterdir()] == ['new.png']
    staging.mkdir()
    (staging / 'newer.png').write_text('newer')
    replace_folder(staging, target)
    assert [p.name for p in target.iterdir()] == ['newer.png']
    # Nothing is left beside it: neither the staging nor the old folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out']


def test_check_writable_file_names_the_option_and_its_folder(tmp_path,
                                                              monkeypatch):
    """A file that can be written passes, its folders not made yet; a
    folder in its place, a file among its parents, or a folder that
    cannot be written is refused, naming the option or its folder."""
    check_writable_file(tmp_path / 'new' / 'deeper' / 'out.json', '--json')
    assert not (tmp_path / 'new').exists()  # checked, nothing made
    (tmp_path / 'a.json').write_text('{}')
    check_writable_file(tmp_path / 'a.json', '--json')  # rewritten later
    with pytest.raises(IsADirectoryError,
                       match=f'--out "{tmp_path}" is a folder'):
        check_writable_file(tmp_path, '--out')
    with pytest.raises(NotADirectoryError,
                       match='--png folder ".*a.json/x": .*is a file'):
        check_writable_file(tmp_path / 'a.json' / 'x' / 'c.png', '--png')
    # Permissions as an unprivileged user meets them (root writes anywhere).
    locked = tmp_path / 'locked'
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, 'access',
        lambda p, mode: False if str(p) == str(locked) else real_access(
            p, mode))
    with pytest.raises(PermissionError,
                       match='Output folder ".*locked" .*not writable'):
        check_writable_file(locked / 'x.onnx')


@pytest.mark.parametrize('relation, output, match', [
    ('is', 'frames', 'is the frames'),
    ('holds', '.', 'holds the frames'),
    ('lies inside', 'frames/out', 'lies inside the frames'),
    ('holds a link target', 'results', r'holds what ".*00001.png" of the '
     'frames'),
    ('apart', 'elsewhere', None),
])
def test_output_overlapping_an_input_is_refused(tmp_path, relation, output,
                                                match):
    frames, results = tmp_path / 'frames', tmp_path / 'results'
    frames.mkdir()
    results.mkdir()
    (frames / '00000.jpg').write_bytes(b'frame')
    (results / '00001.png').write_bytes(b'a previous result')
    # A frame linked to a file of the output: replacing the output would
    # delete the frame's data.
    (frames / '00001.png').symlink_to(results / '00001.png')
    (frames / 'dangling').symlink_to(tmp_path / 'gone' / 'x')
    if match is None:
        check_output_location(tmp_path / output, {'frames': frames})
        return
    with pytest.raises(ValueError, match=match):
        check_output_location(tmp_path / output, {'frames': frames})


@pytest.mark.parametrize('check', [check_writable_dir, check_writable_file])
@pytest.mark.parametrize('path', ['', ' ', '\t'])
def test_an_empty_path_is_no_path(check, path, tmp_path, monkeypatch):
    """An empty --out-dir (an unset variable) is refused, not taken for
    the current folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match='^--out is empty: give a path$'):
        check(path, '--out')
