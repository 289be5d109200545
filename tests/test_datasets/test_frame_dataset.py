import cv2
import numpy as np
import pytest
from mmengine.dataset import Compose

from sfc_plugin.datasets import FrameDataset, SyntheticFrameDataset
from sfc_plugin.utils import register_all_modules

register_all_modules()

PIPELINE = [
    dict(type='mmcv.LoadImageFromFile'),
    dict(type='TwoViewRandomResizedCrop', size=32),
    dict(type='PackMultiViewInputs'),
]


def write_frames(folder, names, size=(20, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        cv2.imwrite(str(folder / n), np.zeros((*size, 3), np.uint8))


def test_youtube_vos_layout(tmp_path):
    root = tmp_path / 'train_all_frames'
    write_frames(root / 'JPEGImages' / 'vid_b', ['00000.jpg', '00005.jpg'])
    write_frames(root / 'JPEGImages' / 'vid_a',
                 ['00000.jpg', '00005.jpg', '00010.jpg'])
    ds = FrameDataset(data_root=str(root), pipeline=PIPELINE)
    assert len(ds) == 5
    assert [ds.get_data_info(i)['video'] for i in range(len(ds))
            ] == ['vid_a'] * 3 + ['vid_b'] * 2
    item = ds[0]
    assert item['inputs'].shape == (2, 3, 32, 32)
    assert item['data_samples'].crop_boxes.shape == (2, 4)
    assert item['data_samples'].img_path.endswith('vid_a/00000.jpg')

    every_other = FrameDataset(data_root=str(root), frame_interval=2)
    assert len(every_other) == 3
    # int() took 1.5 as 1 and failed on NaN without the setting's name.
    for bad in (1.5, float('nan'), 'abc', 0):
        with pytest.raises(ValueError, match='FrameDataset: frame_interval'):
            FrameDataset(data_root=str(root), frame_interval=bad)


def test_davis_layout_with_list(davis2016):
    ds = FrameDataset(
        data_root=str(davis2016),
        data_prefix=dict(img_path='JPEGImages/480p'),
        ann_file='ImageSets/train.txt',
        pipeline=PIPELINE)
    train = (davis2016 / 'ImageSets' / 'train.txt').read_text().split()
    expected = sum(
        len(list((davis2016 / 'JPEGImages' / '480p' / s).glob('*.jpg')))
        for s in train)
    assert len(ds) == expected
    assert {ds.get_data_info(i)['video'] for i in range(len(ds))} == set(train)
    assert ds[0]['inputs'].shape == (2, 3, 32, 32)


def test_flat_folder(tmp_path):
    write_frames(tmp_path / 'imgs', ['a.png', 'b.JPG'])
    (tmp_path / 'imgs' / 'notes.txt').write_text('not a frame')
    ds = FrameDataset(
        data_root=str(tmp_path), data_prefix=dict(img_path='imgs'))
    assert len(ds) == 2


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere'):
        FrameDataset(data_root=str(tmp_path / 'nowhere'))


def test_empty_folder_is_named(tmp_path):
    (tmp_path / 'JPEGImages' / 'vid').mkdir(parents=True)
    with pytest.raises(ValueError, match='no frames .* found in .*JPEGImages'):
        FrameDataset(data_root=str(tmp_path))


def test_listed_video_without_folder(tmp_path):
    write_frames(tmp_path / 'JPEGImages' / 'vid', ['0.jpg'])
    (tmp_path / 'list.txt').write_text('vid\nghost\n')
    with pytest.raises(FileNotFoundError, match='ghost'):
        FrameDataset(data_root=str(tmp_path), ann_file='list.txt')
    with pytest.raises(FileNotFoundError, match='missing.txt'):
        FrameDataset(data_root=str(tmp_path), ann_file='missing.txt')


def test_mixed_layout_is_refused(tmp_path):
    write_frames(tmp_path / 'JPEGImages', ['0.jpg'])
    write_frames(tmp_path / 'JPEGImages' / 'vid', ['0.jpg'])
    with pytest.raises(ValueError, match='both images and sub-folders'):
        FrameDataset(data_root=str(tmp_path))


def test_unreadable_image_is_named(tmp_path):
    folder = tmp_path / 'JPEGImages' / 'vid'
    write_frames(folder, ['00000.jpg'])
    (folder / '00001.jpg').write_bytes(b'this is not a jpeg')
    ds = FrameDataset(data_root=str(tmp_path), pipeline=PIPELINE)
    ds[0]
    with pytest.raises(Exception, match='00001.jpg'):
        ds[1]


def test_synthetic_frames_are_reproducible():
    ds = SyntheticFrameDataset(num_frames=3, img_size=(24, 40),
                               pipeline=PIPELINE[1:])
    a, b = ds[1], ds[1]
    assert a['inputs'].shape == (2, 3, 32, 32)
    raw = Compose([])(ds.get_data_info(2))['img']
    assert raw.shape == (24, 40, 3) and raw.dtype == np.uint8
    assert np.array_equal(raw, ds.get_data_info(2)['img'])
    assert not np.array_equal(raw, ds.get_data_info(1)['img'])
    assert a['data_samples'].crop_boxes.shape == b[
        'data_samples'].crop_boxes.shape
    for bad, name in [(dict(num_frames=0), 'num_frames'),
                      (dict(num_frames=10**10), 'num_frames'),
                      (dict(num_frames=2.5), 'num_frames'),
                      (dict(img_size=(10**5, 10**5)), r'img_size\[0\]'),
                      (dict(img_size=(24, 1)), r'img_size\[1\]'),
                      (dict(img_size='ab'), 'img_size')]:
        with pytest.raises(ValueError, match=f'SyntheticFrameDataset: {name}'):
            SyntheticFrameDataset(**bad)
    # Frames are made when read: a long dataset holds no list of them.
    long = SyntheticFrameDataset(num_frames=10**7, img_size=(24, 40))
    assert len(long) == 10**7 and long.data_list == []
    assert np.array_equal(long.get_data_info(-1)['img'],
                          long.get_data_info(10**7 - 1)['img'])
    with pytest.raises(IndexError, match='out of range'):
        long.get_data_info(10**7)
