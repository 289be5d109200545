import json

import cv2
import numpy as np
import pytest
from mmcv.transforms import LoadImageFromFile

from sfc_plugin.datasets import (
    LoadKeypoints,
    LoadObjectMask,
    LoadPartMap,
    LoadVideoFrame,
    PackVideoFrameInputs,
    read_keypoint_json,
    synthetic_video,
)
from sfc_plugin.utils.fileio import save_palette_png


@pytest.fixture()
def frame_file(tmp_path):
    frames, _ = synthetic_video(1, (40, 56), 2, seed=5)
    path = tmp_path / '00000.jpg'
    cv2.imwrite(str(path), frames[0])
    return path


def test_load_video_frame_decodes_like_mmcv(frame_file):
    ours = LoadVideoFrame()(dict(img_path=str(frame_file)))
    mmcv_ = LoadImageFromFile()(dict(img_path=str(frame_file)))
    assert np.array_equal(ours['img'], mmcv_['img'])
    assert ours['img_shape'] == ours['ori_shape'] == (40, 56)


def test_load_video_frame_takes_a_decoded_frame():
    img = np.zeros((8, 12, 3), np.uint8)
    out = LoadVideoFrame()(dict(img=img, img_path='clip.mp4#3'))
    assert out['img'] is img and out['img_shape'] == (8, 12)


@pytest.mark.parametrize('damage, reason', [
    (lambda data: b'garbage', 'not an image'),
    (lambda data: b'', 'the file is empty'),
    # OpenCV decodes a cut file without an error, the rest grey.
    (lambda data: data[:len(data) * 2 // 3], 'without its end marker'),
    (lambda data: data + b'\0\0 camera trailer', None),
    # A motion photo's appended video may hold any bytes, FF DA too.
    (lambda data: data + b'\xff\xda\x00\x0c trailer', None),
])
def test_load_video_frame_names_an_undecodable_file(frame_file, damage,
                                                    reason):
    good = cv2.imread(str(frame_file))
    for ext in ('.jpg', '.png'):
        data = damage(cv2.imencode(ext, good)[1].tobytes())
        path = frame_file.with_suffix(ext)
        path.write_bytes(data)
        if reason is None:
            assert LoadVideoFrame()(dict(img_path=str(path)))['img'].shape \
                == good.shape
            continue
        if ext == '.png' and reason == 'without its end marker':
            reason = 'without its IEND chunk'
        with pytest.raises(OSError, match=f'Cannot decode frame "{path}": '
                           f'.*{reason}'):
            LoadVideoFrame()(dict(img_path=str(path)))


def results(img_shape=(6, 8), frame_id=0, **extra):
    return dict(img=np.zeros((*img_shape, 3), np.uint8), img_path='f.jpg',
                frame_id=frame_id, **extra)


def test_part_map_keeps_class_ids_and_checks_their_range(tmp_path):
    parts = np.zeros((6, 8), np.uint8)
    parts[:, 4:] = 255  # a {0, 255} map is not a binary mask here
    path = tmp_path / 'p.png'
    cv2.imwrite(str(path), parts)
    with pytest.raises(ValueError, match='holds class id 255; '
                       'num_classes=20 allows 0 to 19'):
        LoadPartMap(20)(results(seg_map_path=str(path)))
    parts[:, 4:] = 19
    save_palette_png(parts, str(path))
    out = LoadPartMap(20)(results(seg_map_path=str(path)))
    assert np.array_equal(out['gt_seg_map'], parts)
    # As an object mask, {0, 255} is one object.
    parts[:, 4:] = 255
    cv2.imwrite(str(path), parts)
    mask = LoadObjectMask()(results(seg_map_path=str(path)))['gt_seg_map']
    assert set(np.unique(mask)) == {0, 1}
    with pytest.raises(ValueError, match='num_classes must be in'):
        LoadPartMap(1)


def test_annotations_of_another_size_are_refused(tmp_path):
    path = tmp_path / 'm.png'
    save_palette_png(np.ones((6, 9), np.uint8), str(path))
    for loader in (LoadObjectMask(), LoadPartMap(4)):
        with pytest.raises(ValueError, match='is 9×6 but frame "f.jpg" is '
                           '8×6'):
            loader(results(seg_map_path=str(path)))


def test_first_frame_only_loads_frame_0(tmp_path):
    path = tmp_path / 'k.json'
    path.write_text('[[1, 2]]')
    later = LoadKeypoints()(results(frame_id=3, joints_path=str(path)))
    assert 'gt_joints' not in later
    first = LoadKeypoints()(results(joints_path=str(path)))
    assert first['gt_joints'].tolist() == [[1.0, 2.0]]
    assert first['gt_joints'].dtype == np.float32
    assert 'gt_joints' not in LoadKeypoints()(results())


@pytest.mark.parametrize('content', [
    '[[3, 4.5], [0, 0]]',
    '{"keypoints": [[3, 4.5], [0, 0]], "names": ["head", "foot"]}',
])
def test_keypoint_json_forms(tmp_path, content):
    path = tmp_path / 'k.json'
    path.write_text(content)
    joints = read_keypoint_json(str(path), (10, 10))
    assert joints.tolist() == [[3.0, 4.5], [0.0, 0.0]]


@pytest.mark.parametrize('content, message', [
    ('not json', 'Cannot read keypoints'),
    ('[]', 'non-empty list'),
    ('{"points": []}', 'needs a "keypoints" entry'),
    ('[[1, 2], [3]]', 'entry 1 is \\[3\\]'),
    ('[[1, "a"]]', 'entry 0'),
    ('[[1, NaN]]', 'not a pair of finite numbers'),
    ('[[1, true]]', 'entry 0'),
    ('[[1, 2], [10, 2]]', r'keypoint 1 at \(x=10, y=2\) lies outside the '
     '10×8 frame'),
])
def test_bad_keypoint_files_are_named(tmp_path, content, message):
    path = tmp_path / 'k.json'
    path.write_text(content)
    with pytest.raises((OSError, ValueError), match=message) as err:
        read_keypoint_json(str(path), (8, 10))
    assert 'k.json' in str(err.value)


def test_pack_keeps_the_frame_name():
    packed = PackVideoFrameInputs()(dict(
        results(), frame_name='00007', video='v',
        gt_joints=np.array(json.loads('[[1, 2]]'), np.float32)))
    sample = packed['data_samples']
    assert sample.frame_name == '00007' and sample.video == 'v'
    assert packed['inputs'].shape == (3, 6, 8)
    assert sample.gt_joints.shape == (1, 2)


def test_synthetic_video_has_exact_masks():
    frames, masks = synthetic_video(5, (64, 96), 4, seed=2)
    again, _ = synthetic_video(5, (64, 96), 4, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(frames, again))
    assert len(frames) == len(masks) == 5
    assert frames[0].shape == (64, 96, 3) and masks[0].dtype == np.uint8
    assert set(np.unique(masks[0])) <= set(range(5))
    assert masks[0].max() >= 1
    # Objects move: masks differ between the first and the last frame.
    assert (masks[0] != masks[-1]).any()
    with pytest.raises(ValueError, match='num_objects'):
        synthetic_video(2, (64, 96), 0)


def test_cut_jpeg_is_told_past_an_exif_thumbnail():
    """A thumbnail in APP1 has a scan and an end marker of its own: they
    must not pass a photo cut short as whole."""
    from sfc_plugin.datasets.utils import image_cut_short
    frames, _ = synthetic_video(1, (40, 56), 2, seed=5)
    photo = cv2.imencode('.jpg', frames[0])[1].tobytes()
    thumb = cv2.imencode('.jpg', frames[0][:8, :8])[1].tobytes()
    exif = b'Exif\0\0' + thumb
    with_thumb = (photo[:2] + b'\xff\xe1' + (len(exif) + 2).to_bytes(2, 'big')
                  + exif + photo[2:])
    assert image_cut_short(with_thumb) is None
    assert image_cut_short(with_thumb[:-len(photo) // 3]) == (
        'a JPEG file without its end marker (cut short)')
    assert image_cut_short(with_thumb[:30]) == (
        'a JPEG file without image data (cut short in its headers)')
