import os

import cv2
import numpy as np
import pytest

from sfc_plugin.datasets import (
    FrameFolderReader,
    VideoFileReader,
    open_video,
    synthetic_video,
)


def write_frames(folder, names, size=(24, 32)):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        img = np.full((*size, 3), 10 * i, np.uint8)
        cv2.imwrite(str(folder / name), img)
    return folder


def write_video(path, frames, fps=10, fourcc='mp4v'):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps,
                             (w, h))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def test_frame_folder_orders_by_frame_number(tmp_path):
    folder = write_frames(tmp_path / 'seq',
                          ['frame_10.png', 'frame_9.png', 'frame_8.png'])
    reader = FrameFolderReader(str(folder))
    assert reader.frame_names == ['frame_8.png', 'frame_9.png',
                                  'frame_10.png']
    assert reader.num_frames == 3 and reader.frame_size == (24, 32)
    assert reader.name == 'seq'
    items = list(reader)
    assert [i['frame_id'] for i in items] == [0, 1, 2]
    assert [i['frame_name'] for i in items] == ['frame_8', 'frame_9',
                                                'frame_10']
    assert items[2]['img_path'].endswith('frame_10.png')
    assert 'img' not in items[0]


def test_frame_folder_without_numbers_orders_by_name(tmp_path):
    folder = write_frames(tmp_path / 's', ['b.jpg', 'a.jpg', 'c.jpg'])
    (folder / 'notes.txt').write_text('not a frame')
    assert FrameFolderReader(str(folder)).frame_names == [
        'a.jpg', 'b.jpg', 'c.jpg'
    ]


@pytest.mark.parametrize('names, message', [
    (['00000.jpg', '00001.jpg', '00003.jpg'],
     '"00001.jpg" is followed by "00003.jpg" (frame 2 missing)'),
    (['00000.jpg', '00004.jpg'], '(frames 1 to 3 missing)'),
    (['1.jpg', '01.jpg', '2.jpg'], 'both claim frame number 1'),
    (['a.jpg', 'a.png', 'b.jpg'], '"a.jpg" and "a.png" are one frame'),
    (['frame2.jpg', 'frame10.jpg', 'cover.jpg'],
     'mixes numbered frames ("frame10.jpg") with "cover.jpg"'),
])
def test_frame_folder_with_gaps_is_refused(tmp_path, names, message):
    folder = write_frames(tmp_path / 's', names)
    with pytest.raises(ValueError) as err:
        FrameFolderReader(str(folder))
    assert message in str(err.value) and str(folder) in str(err.value)


def test_frame_folder_with_mixed_sizes_is_refused(tmp_path):
    folder = write_frames(tmp_path / 's', ['00000.jpg', '00001.jpg'])
    cv2.imwrite(str(folder / '00002.jpg'), np.zeros((30, 32, 3), np.uint8))
    with pytest.raises(ValueError) as err:
        FrameFolderReader(str(folder))
    assert ('mixes frame sizes: "00000.jpg" is 32×24, "00002.jpg" is 32×30'
            in str(err.value))


def test_frame_folder_errors_name_the_folder_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere'):
        FrameFolderReader(str(tmp_path / 'nowhere'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='holds no image'):
        FrameFolderReader(str(tmp_path / 'empty'))
    folder = write_frames(tmp_path / 's', ['00000.jpg'])
    (folder / '00001.jpg').write_bytes(b'not a jpeg')
    with pytest.raises(OSError, match='Cannot read frame .*00001.jpg'):
        FrameFolderReader(str(folder))


def test_frame_size_is_the_decoded_one_for_turned_photos(tmp_path):
    """A phone's portrait JPEG is stored landscape with an EXIF orientation
    that OpenCV applies: the folder's size is the decoded one."""
    from PIL import Image

    from sfc_plugin.datasets import LoadVideoFrame
    folder = tmp_path / 's'
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90° clockwise
    for t in range(2):
        Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(
            folder / f'{t:05d}.jpg', exif=exif.tobytes())
    reader = FrameFolderReader(str(folder))
    decoded = LoadVideoFrame()(dict(img_path=str(folder / '00000.jpg')))
    assert reader.frame_size == decoded['img'].shape[:2] == (40, 20)


def test_frame_that_is_not_a_regular_file_is_refused(tmp_path):
    folder = write_frames(tmp_path / 's', ['00000.jpg'])
    os.mkfifo(folder / '00001.jpg')
    with pytest.raises(ValueError, match='00001.jpg" is not a regular file'):
        FrameFolderReader(str(folder))


def test_images_beyond_pils_pixel_limit_are_named(tmp_path, monkeypatch):
    """PIL refuses images of more than 2 x MAX_IMAGE_PIXELS (179 MP by
    default) with its own exception type, which once reached the user as an
    unexpected error: frames and labels that large are read errors naming
    the file. (The limit is lowered here, to 24 x 32 / 2 pixels.)"""
    from PIL import Image

    from sfc_plugin.datasets import read_object_mask
    folder = write_frames(tmp_path / 's', ['00000.jpg'])
    cv2.imwrite(str(tmp_path / 'first.png'), np.zeros((24, 32), np.uint8))
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 24 * 32 // 4)
    with pytest.raises(OSError, match=r'Cannot read frame .*00000\.jpg.*'
                       'decompression bomb'):
        FrameFolderReader(str(folder))
    with pytest.raises(OSError, match=r'Cannot read annotation .*first\.png'):
        read_object_mask(str(tmp_path / 'first.png'))


def test_video_file_frames_are_decoded_in_order(tmp_path):
    frames, _ = synthetic_video(6, (48, 64), 2, seed=1)
    path = write_video(tmp_path / 'clip.mp4', frames)
    reader = open_video(str(path))
    assert isinstance(reader, VideoFileReader)
    assert reader.name == 'clip' and reader.frame_size == (48, 64)
    assert reader.num_frames == 6 and reader.fps == pytest.approx(10)
    items = list(reader)
    assert [i['frame_name'] for i in items] == [f'{t:05d}' for t in range(6)]
    for item, frame in zip(items, frames):
        assert item['img'].shape == (48, 64, 3)
        # Lossy codec: close to the original, not equal.
        assert np.abs(item['img'].astype(int) - frame).mean() < 12
    # A second pass reads the video again from the start.
    assert len(list(reader)) == 6


def test_unreadable_video_is_refused(tmp_path):
    bad = tmp_path / 'clip.mp4'
    bad.write_bytes(b'\x00' * 1000)
    with pytest.raises(OSError, match='Cannot read video .*clip.mp4'):
        open_video(str(bad))
    with pytest.raises(FileNotFoundError, match='Video source not found'):
        open_video(str(tmp_path / 'missing.mp4'))
    assert isinstance(
        open_video(str(write_frames(tmp_path / 'f', ['0.png']))),
        FrameFolderReader)


def concatenated_jpegs(path, frames):
    """A raw MJPEG stream: its container states no frame count."""
    with open(path, 'wb') as f:
        for frame in frames:
            f.write(cv2.imencode('.jpg', frame)[1].tobytes())
    return path


def test_video_whose_end_cannot_be_checked_says_so(tmp_path):
    frames, _ = synthetic_video(6, (48, 64), 2, seed=1)
    reader = open_video(str(concatenated_jpegs(tmp_path / 'v.mjpeg',
                                               frames)))
    assert reader.num_frames is None and reader.unverified_end is None
    assert len(list(reader)) == 6
    assert reader.unverified_end == (
        'the video file states no frame count: whether decoding ended at its '
        'end after 6 frames or where it is cut short cannot be checked')
    whole = write_video(tmp_path / 'clip.mp4', frames)
    reader = open_video(str(whole))
    assert len(list(reader)) == 6 and reader.unverified_end is None


def test_decoding_past_an_estimated_frame_count_drops_it(tmp_path):
    """MPEG program streams estimate their count from the duration; one cut
    short may decode more frames than it states (here a fake count)."""
    frames, _ = synthetic_video(5, (48, 64), 2, seed=1)
    reader = open_video(str(write_video(tmp_path / 'clip.mp4', frames)))
    reader.num_frames = 3
    assert len(list(reader)) == 5
    assert reader.num_frames is None and reader.estimated_frame_count == 3
    assert reader.unverified_end.startswith(
        'the video file states 3 frames only as an estimate: whether '
        'decoding ended at its end after 5 frames')


def test_mpeg_stream_counts_are_estimates(tmp_path):
    """An MPEG program stream cut in half states the frames that decode:
    its end is never called verified."""
    frames, _ = synthetic_video(12, (48, 64), 2, seed=1)
    path = write_video(tmp_path / 'clip.mpg', frames, fps=25, fourcc='PIM1')
    data = path.read_bytes()
    (tmp_path / 'cut.mpg').write_bytes(data[:len(data) // 2])
    for video in (path, tmp_path / 'cut.mpg'):
        reader = open_video(str(video))
        assert reader.num_frames is None and reader.estimated_frame_count
        decoded = len(list(reader))
        assert 0 < decoded <= 12
        assert reader.unverified_end.startswith(
            f'the video file states {reader.estimated_frame_count} frames '
            'only as an estimate')


def test_video_losing_a_middle_frame_does_not_claim_its_names(tmp_path):
    """A damaged chunk id makes the demuxer skip frame 5 of 10 and number
    the rest one early (timestamps too): the reader cannot locate the loss,
    and neither its error nor an accepted truncation claims the names."""
    from sfc_plugin.datasets import TruncatedVideoError
    frames = [np.full((48, 64, 3), 20 * i, np.uint8) for i in range(10)]
    path = write_video(tmp_path / 'clip.avi', frames, fourcc='MJPG')
    data = bytearray(path.read_bytes())
    movi, index = data.find(b'movi'), data.find(b'idx1')
    chunks = [i for i in range(movi, index) if data.startswith(b'00dc', i)]
    assert len(chunks) == 10
    data[chunks[5]:chunks[5] + 4] = bytes(4)
    path.write_bytes(data)
    with pytest.raises(TruncatedVideoError) as err:
        list(VideoFileReader(str(path)))
    assert str(err.value).startswith(
        f'Video "{path}" cannot be decoded to its end: 9 of its 10 frames '
        'decode (the file is corrupt or cut short; which frames are missing '
        'cannot be told)')
    reader = VideoFileReader(str(path), allow_truncated=True)
    decoded = [item['img'].mean() for item in reader]
    assert reader.truncated_at == 9 and len(decoded) == 9
    # What a reader that claimed names would get wrong: "00005" is frame 6.
    assert decoded[5] == pytest.approx(120, abs=3)
