"""DAVIS as an mmdet 3.x BaseVideoDataset (real mmdet, full mmcv)."""
import numpy as np
import pytest

from ..test_evaluation.davis_fixtures import moving_squares, write_davis

pytestmark = pytest.mark.mmdet

TEST_PIPELINE = [
    dict(type='TransformBroadcaster',
         transforms=[dict(type='LoadImageFromFile'),
                     dict(type='LoadTrackAnnotations', with_mask=True)]),
    dict(type='PackTrackInputs',
         meta_keys=('video', 'seg_map_path', 'first_seg_map_path',
                    'mask_format')),
]


def build(root, **kwargs):
    from mmengine.registry import init_default_scope

    from sfc_plugin.registry import DATASETS
    init_default_scope('mmdet')
    return DATASETS.build(dict(
        type='DAVISVideoDataset', data_root=str(root),
        ann_file='ImageSets/val.txt', test_mode=True,
        pipeline=TEST_PIPELINE, **kwargs))


@pytest.fixture()
def videos(tmp_path):
    videos = {'a': moving_squares(4, 48, 64, 2, seed=1),
              'b': moving_squares(3, 48, 64, 1, seed=2)}
    return write_davis(tmp_path / 'davis', videos), videos


def test_videos_frames_and_instances_in_mmdet_form(mmdet, videos):
    from mmdet.datasets import BaseVideoDataset
    from pycocotools import mask as mask_utils
    root, data = videos
    dataset = build(root)
    assert isinstance(dataset, BaseVideoDataset)
    assert len(dataset) == 2 and dataset.num_all_imgs == 7
    assert [dataset.get_len_per_video(i) for i in range(2)] == [4, 3]
    info = dataset.get_data_info(0)
    assert info['video'] == 'a' and info['video_length'] == 4
    img_ids = [img['img_id'] for v in range(2)
               for img in dataset.get_data_info(v)['images']]
    assert img_ids == list(range(7))
    frame = info['images'][2]
    assert (frame['frame_id'], frame['height'], frame['width']) == (2, 48, 64)
    assert frame['seg_map_path'].endswith('a/00002.png')
    assert [i['instance_id'] for i in frame['instances']] == [1, 2]
    for inst in frame['instances']:
        mask = mask_utils.decode(inst['mask']).astype(bool)
        truth = data['a'][1][2] == inst['instance_id']
        assert np.array_equal(mask, truth)
        ys, xs = np.nonzero(truth)
        assert inst['bbox'] == [xs.min(), ys.min(), xs.max() + 1,
                                ys.max() + 1]


def test_pipeline_gives_track_data_samples(mmdet, videos):
    from mmdet.structures import TrackDataSample
    root, data = videos
    out = build(root).prepare_data((1, 0))
    assert tuple(out['inputs'].shape) == (1, 3, 48, 64)
    sample = out['data_samples']
    assert isinstance(sample, TrackDataSample)
    frame = sample.video_data_samples[0]
    assert (frame.video, frame.frame_id, frame.ori_video_length) == ('b', 0,
                                                                     3)
    gt = frame.gt_instances
    assert gt.instances_ids.tolist() == [1]
    assert np.array_equal(gt.masks.to_ndarray()[0].astype(bool),
                          data['b'][1][0] == 1)


def test_first_frame_only_and_davis2016_masks(mmdet, tmp_path):
    root = write_davis(tmp_path / 'd16',
                       {'c': moving_squares(3, 32, 48, 1, seed=3)},
                       binary=True)
    dataset = build(root, annotated_frames='first')
    images = dataset.get_data_info(0)['images']
    assert [len(img['instances']) for img in images] == [1, 0, 0]
    assert images[0]['instances'][0]['instance_id'] == 1
    assert images[2]['seg_map_path'].endswith('c/00002.png')
    with pytest.raises(ValueError, match="'all' or 'first'"):
        build(root, annotated_frames='some')


def test_errors_name_the_sequence(mmdet, tmp_path):
    root = write_davis(tmp_path / 'd', {'c': moving_squares(3, 32, 48, 1)})
    (root / 'ImageSets' / 'val.txt').write_text('c\nmissing\n')
    with pytest.raises(FileNotFoundError, match='"missing"'):
        build(root)
