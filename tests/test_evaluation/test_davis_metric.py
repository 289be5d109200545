import csv

import numpy as np
import pytest
from PIL import Image

from sfc_plugin.datasets import DAVISDataset, read_object_mask
from sfc_plugin.evaluation.functional import (
    boundary_f_measure,
    per_frame_statistics,
    region_similarity,
)
from sfc_plugin.evaluation.metrics import DAVISMetric

from .davis_fixtures import moving_squares, write_davis


def samples_for(dataset, preds):
    out = []
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        out.append(dict(info, pred_seg_map=preds[info['video']][
            info['frame_id']]))
    return out


@pytest.fixture()
def two_videos(tmp_path):
    videos = {
        'a': moving_squares(6, 48, 64, 2, seed=1),
        'b': moving_squares(5, 48, 64, 1, seed=2),
    }
    return write_davis(tmp_path / 'davis', videos), videos


def test_perfect_prediction_scores_one(two_videos, tmp_path):
    root, videos = two_videos
    ds = DAVISDataset(data_root=str(root), ann_file='ImageSets/val.txt')
    metric = DAVISMetric(output_dir=str(tmp_path / 'out'))
    metric.process(None, samples_for(ds, {k: v[1] for k, v in
                                          videos.items()}))
    res = metric.compute_metrics(metric.results)
    assert res['J&F-Mean'] == 1.0 and res['J-Recall'] == 1.0
    assert res['J-Decay'] == 0.0
    png = Image.open(tmp_path / 'out' / 'a' / '00003.png')
    assert png.mode == 'P'
    assert np.array_equal(np.array(png), videos['a'][1][3])
    with open(tmp_path / 'out' / 'per-sequence_results-val.csv') as f:
        rows = list(csv.reader(f))
    assert rows[0] == ['Sequence', 'J-Mean', 'F-Mean']
    assert [r[0] for r in rows[1:]] == ['a_1', 'a_2', 'b_1']
    assert (tmp_path / 'out' / 'global_results-val.csv').is_file()


def test_masks_appear_a_whole_video_at_a_time(two_videos, tmp_path):
    """An interrupted run used to leave old and new masks mixed beside the
    earlier run's global CSV, looking finished."""
    root, videos = two_videos
    ds = DAVISDataset(data_root=str(root), ann_file='ImageSets/val.txt')
    out = tmp_path / 'out'
    first = DAVISMetric(output_dir=str(out))
    first.process(None, samples_for(ds, {k: v[1] for k, v in
                                         videos.items()}))
    first.compute_metrics(first.results)
    old = (out / 'b' / '00002.png').read_bytes()
    samples = samples_for(ds, {k: np.zeros_like(v[1]) for k, v in
                               videos.items()})
    second = DAVISMetric(output_dir=str(out))
    # Stopped after video a and two frames of b (6 + 2 frames).
    second.process(None, samples[:8])
    assert not (out / 'global_results-val.csv').exists()
    assert not (out / 'per-sequence_results-val.csv').exists()
    assert np.array(Image.open(out / 'a' / '00003.png')).max() == 0
    assert (out / 'b' / '00002.png').read_bytes() == old
    assert sorted(p.name for p in out.iterdir()) == ['.b.partial', 'a', 'b']
    # The next run clears what the stopped one left.
    third = DAVISMetric(output_dir=str(out))
    third.process(None, samples)
    third.compute_metrics(third.results)
    assert sorted(p.name for p in out.iterdir()) == [
        'a', 'b', 'global_results-val.csv', 'per-sequence_results-val.csv']
    (out / 'b' / 'notes.txt').write_text('mine')
    with pytest.raises(FileExistsError, match='is not an earlier result of '
                       '"b"'):
        DAVISMetric(output_dir=str(out)).process(None, samples)
    assert (out / 'b' / 'notes.txt').read_text() == 'mine'


@pytest.mark.parametrize('output', [True, False])
@pytest.mark.parametrize('dropped, named', [
    (10, '"b": 4 of its 5 frames'),  # b's last frame
    (2, '"a": 5 of its 6 frames'),  # a middle frame of a
])
def test_a_video_that_did_not_come_whole_is_an_error(two_videos, tmp_path,
                                                    dropped, named, output):
    """Scores and masks of a video with a frame missing used to look
    complete: the masks were moved into place and the global CSV written."""
    root, videos = two_videos
    ds = DAVISDataset(data_root=str(root), ann_file='ImageSets/val.txt')
    samples = samples_for(ds, {k: v[1] for k, v in videos.items()})
    del samples[dropped]
    out = tmp_path / 'out'
    metric = DAVISMetric(output_dir=str(out) if output else None)
    metric.process(None, samples)
    with pytest.raises(RuntimeError, match=f'1 video.s. did not come whole '
                       f'.{named}.; their masks were not written'):
        metric.evaluate(len(samples))
    if output:
        whole = 'b' if dropped == 2 else 'a'
        assert sorted(p.name for p in out.iterdir()) == [whole]
    # The next evaluation starts afresh.
    metric.process(None, samples_for(ds, {k: v[1] for k, v in
                                          videos.items()}))
    assert metric.evaluate(11)['davis/J&F-Mean'] == 1.0


def test_matches_toolkit_aggregation(two_videos):
    """Objects, not videos, are averaged; first and last frames skipped."""
    root, videos = two_videos
    ds = DAVISDataset(data_root=str(root), ann_file='ImageSets/val.txt')
    rng = np.random.default_rng(0)
    preds = {}
    for name, (_, masks) in videos.items():
        noisy = []
        for m in masks:
            p = m.copy()
            flip = rng.random(m.shape) < 0.05
            p[flip] = rng.integers(0, 3, flip.sum())
            noisy.append(p)
        preds[name] = noisy
    metric = DAVISMetric()
    metric.process(None, samples_for(ds, preds))
    res = metric.compute_metrics(metric.results)

    js, fs = [], []
    for name, (_, masks) in videos.items():
        num_obj = int(masks[0].max())
        for o in range(1, num_obj + 1):
            jv = [region_similarity(masks[t] == o, preds[name][t] == o)
                  for t in range(1, len(masks) - 1)]
            fv = [boundary_f_measure(masks[t] == o, preds[name][t] == o)
                  for t in range(1, len(masks) - 1)]
            js.append(per_frame_statistics(np.array(jv)))
            fs.append(per_frame_statistics(np.array(fv)))
    assert len(js) == 3
    j_mean = np.mean([s['mean'] for s in js])
    f_mean = np.mean([s['mean'] for s in fs])
    assert res['J-Mean'] == pytest.approx(j_mean)
    assert res['F-Mean'] == pytest.approx(f_mean)
    assert res['J&F-Mean'] == pytest.approx((j_mean + f_mean) / 2)
    assert res['F-Decay'] == pytest.approx(np.mean([s['decay'] for s in fs]))


def test_binary_davis2016_masks(tmp_path):
    frames, masks = moving_squares(4, 32, 40, 1)
    root = write_davis(tmp_path / 'd16', {'v': (frames, masks)},
                       binary=True)
    m = read_object_mask(str(root / 'Annotations/480p/v/00000.png'))
    assert set(np.unique(m)) == {0, 1}
    assert np.array_equal(m, masks[0])


def test_video_too_short_to_score_is_left_out(tmp_path):
    root = write_davis(tmp_path / 'd', {
        'one': moving_squares(1, 32, 40, 1),
        'three': moving_squares(3, 32, 40, 1)
    })
    ds = DAVISDataset(data_root=str(root), ann_file='ImageSets/val.txt')
    preds = {'one': moving_squares(1, 32, 40, 1)[1],
             'three': moving_squares(3, 32, 40, 1)[1]}
    metric = DAVISMetric()
    metric.process(None, samples_for(ds, preds))
    assert metric.compute_metrics(metric.results)['J-Mean'] == 1.0


def test_dataset_errors_name_the_file(tmp_path):
    frames, masks = moving_squares(3, 32, 40, 1)
    root = write_davis(tmp_path / 'd', {'v': (frames, masks)})
    (root / 'ImageSets/val.txt').write_text('v\nghost\n')
    with pytest.raises(FileNotFoundError, match='ghost'):
        DAVISDataset(data_root=str(root), ann_file='ImageSets/val.txt')
    with pytest.raises(FileNotFoundError, match='nope.txt'):
        DAVISDataset(data_root=str(root), ann_file='ImageSets/nope.txt')
    (root / 'ImageSets/val.txt').write_text('v\n')
    (root / 'Annotations/480p/v/00000.png').unlink()
    with pytest.raises(FileNotFoundError, match='v/00000.png'):
        DAVISDataset(data_root=str(root), ann_file='ImageSets/val.txt')


def test_frame_and_mask_sizes_must_match(tmp_path):
    from sfc_plugin.datasets.transforms import LoadObjectMask
    frames, masks = moving_squares(2, 32, 40, 1)
    root = write_davis(tmp_path / 'd', {'v': (frames, masks)})
    load = LoadObjectMask()
    path = str(root / 'Annotations/480p/v/00000.png')
    out = load(dict(img=frames[0], seg_map_path=path, frame_id=0))
    assert np.array_equal(out['gt_seg_map'], masks[0])
    with pytest.raises(ValueError, match=r'00000.png" is 40×32 but frame'):
        load(dict(img=frames[0][:, :30], seg_map_path=path, frame_id=0,
                  img_path='x.jpg'))
    # Later frames are left to the metric.
    assert 'gt_seg_map' not in load(dict(img=frames[1], seg_map_path=path,
                                         frame_id=1))


def test_no_object_and_sparse_ids(tmp_path):
    """An empty first mask is a defined result (left out of the score); ids
    above the object count keep their value (objects 1..max id)."""
    empty = moving_squares(4, 32, 40, 1)
    empty = (empty[0], [np.zeros_like(m) for m in empty[1]])
    frames, masks = moving_squares(4, 32, 40, 2, seed=7)
    masks = [np.where(m == 2, 5, m).astype(np.uint8) for m in masks]
    root = write_davis(tmp_path / 'd', {'empty': empty,
                                        'sparse': (frames, masks)})
    ds = DAVISDataset(data_root=str(root), ann_file='ImageSets/val.txt')
    metric = DAVISMetric()
    metric.process(None, samples_for(ds, {'empty': empty[1],
                                          'sparse': masks}))
    res = metric.compute_metrics(metric.results)
    # Objects 1..5 of "sparse": 2, 3, 4 are empty in both (J = F = 1).
    assert res['J&F-Mean'] == 1.0
    assert len([r for r in metric.results if r['video'] == 'sparse']) == 4


def mmdet_form(dataset, preds, instance_ids=None):
    """The same predictions as mmdet's trackers give them: one result per
    frame (frame-level loading), a TrackDataSample-like dict whose frame
    holds ``pred_track_instances`` and the meta data PackTrackInputs packs."""
    from mmengine.structures import BaseDataElement, InstanceData
    out = []
    for sample in samples_for(dataset, preds):
        ids = np.arange(1, int(sample['pred_seg_map'].max()) + 1)
        frame = BaseDataElement(metainfo=dict(
            video=sample['video'], video_id=hash(sample['video']),
            img_path=sample['img_path'],
            seg_map_path=sample['seg_map_path'],
            first_seg_map_path=sample['first_seg_map_path'],
            mask_format='auto', frame_id=sample['frame_id'],
            # What frame-level loading (TrackImgSampler) packs.
            video_length=1, ori_video_length=sample['video_length'],
            ori_shape=sample['pred_seg_map'].shape))
        frame.pred_track_instances = InstanceData(
            masks=sample['pred_seg_map'][None] == ids[:, None, None],
            instances_id=ids, labels=np.zeros_like(ids),
            scores=np.ones(len(ids)))
        out.append(dict(video_data_samples=[frame]))
    return out


def test_mmdet_tracking_results_score_as_sfc_plugin_results(two_videos,
                                                            tmp_path):
    """mmdet's form (pred_track_instances, one TrackDataSample per frame,
    the dataset's length counting videos) gives the same figures, masks
    and CSVs as sfc_plugin's."""
    root, videos = two_videos
    dataset = DAVISDataset(data_root=str(root), ann_file='ImageSets/val.txt')
    rng = np.random.default_rng(0)
    preds = {
        name: [np.where(rng.random(m.shape) < 0.05, 0, m).astype(np.uint8)
               for m in masks]
        for name, (_, masks) in videos.items()
    }
    results = {}
    for form, samples, size in [
            ('sfc', samples_for(dataset, preds), len(dataset)),
            ('mmdet', mmdet_form(dataset, preds), 2)]:
        metric = DAVISMetric(output_dir=str(tmp_path / form))
        metric.process({}, samples)
        results[form] = metric.evaluate(size)
    assert results['mmdet'] == results['sfc']
    for name in ('global_results-val.csv', 'per-sequence_results-val.csv',
                 'a/00003.png', 'b/00004.png'):
        assert (tmp_path / 'sfc' / name).read_bytes() == (
            tmp_path / 'mmdet' / name).read_bytes(), name


def test_mmdet_results_need_the_metric_meta_keys(two_videos):
    root, videos = two_videos
    dataset = DAVISDataset(data_root=str(root), ann_file='ImageSets/val.txt')
    preds = {name: masks for name, (_, masks) in videos.items()}
    samples = mmdet_form(dataset, preds)
    del samples[0]['video_data_samples'][0].first_seg_map_path
    with pytest.raises(KeyError, match='first_seg_map_path'):
        DAVISMetric().process({}, samples)
    samples = mmdet_form(dataset, preds)
    samples[0]['video_data_samples'][0].pred_track_instances.instances_id = (
        np.array([300, 301]))
    with pytest.raises(ValueError, match='1-255'):
        DAVISMetric().process({}, samples)


def test_first_frame_matching_renumbers_detected_objects(two_videos,
                                                         tmp_path):
    """Detected objects carry their own ids: matched on frame 0 to the
    annotated objects, they score as the annotation's, an extra detection
    is dropped and a missed object scores 0."""
    from sfc_plugin.evaluation.metrics.davis_metric import match_objects
    root, videos = two_videos
    dataset = DAVISDataset(data_root=str(root), ann_file='ImageSets/val.txt')
    truth = {name: masks for name, (_, masks) in videos.items()}
    swapped = {'a': [np.choose(m, [0, 2, 1]).astype(np.uint8)
                     for m in truth['a']],
               'b': [np.where(m == 1, 3, 0).astype(np.uint8)
                     for m in truth['b']]}
    extra = np.zeros_like(swapped['a'][0])
    extra[-4:, -4:] = 5
    swapped['a'] = [np.maximum(m, extra) for m in swapped['a']]
    metric = DAVISMetric(output_dir=str(tmp_path / 'out'),
                         match_first_frame=True)
    metric.process({}, samples_for(dataset, swapped))
    assert metric.evaluate(len(dataset))['davis/J&F-Mean'] == 1.0
    written = np.array(Image.open(tmp_path / 'out' / 'a' / '00002.png'))
    assert np.array_equal(written, truth['a'][2])
    # No overlap, no match.
    table = match_objects(np.full((4, 4), 1, np.uint8),
                          np.pad(np.ones((1, 1), np.uint8), ((0, 3), (0, 3))))
    assert table[1] == 1
    table = match_objects(np.pad(np.ones((1, 1), np.uint8), ((3, 0), (3, 0))),
                          np.pad(np.ones((1, 1), np.uint8), ((0, 3), (0, 3))))
    assert table[1] == 0


def test_ground_truth_anchor_protocol_is_scored_apart(two_videos, tmp_path):
    """Every N-th frame given as an anchor: frames after the first anchor
    are scored, anchors excluded, into files and names of their own; the
    paper protocol's files are not written, and the two never mix."""
    from sfc_plugin.evaluation.metrics.davis_metric import scored_frame
    assert [t for t in range(12) if scored_frame(t, 12, 3)] == [4, 5, 7, 8,
                                                               10]
    assert [t for t in range(5) if scored_frame(t, 5)] == [1, 2, 3]
    root, videos = two_videos
    dataset = DAVISDataset(data_root=str(root), ann_file='ImageSets/val.txt',
                           anchor_interval=2)
    anchors = [dataset.get_data_info(i) for i in range(len(dataset))]
    assert [(a['video'], a['frame_id']) for a in anchors if a['anchor']] == [
        ('a', 2), ('a', 4), ('b', 2), ('b', 4)]
    truth = {name: masks for name, (_, masks) in videos.items()}
    metric = DAVISMetric(output_dir=str(tmp_path / 'out'))
    metric.process({}, samples_for(dataset, truth))
    scores = metric.evaluate(len(dataset))
    assert scores['davis/anchors_every_2/J&F-Mean'] == 1.0
    assert not any(k.startswith('davis/J&F') for k in scores)
    assert sorted(p.name for p in (tmp_path / 'out').glob('*.csv')) == [
        'global_results-val-anchors_every_2.csv',
        'per-sequence_results-val-anchors_every_2.csv']
    mixed = DAVISMetric()
    plain = DAVISDataset(data_root=str(root), ann_file='ImageSets/val.txt')
    mixed.process({}, samples_for(dataset, truth)[:6])
    mixed.process({}, samples_for(plain, truth)[6:])
    with pytest.raises(ValueError, match='never scored together'):
        mixed.evaluate(len(plain))
    with pytest.raises(ValueError, match='anchor_interval'):
        DAVISDataset(data_root=str(root), ann_file='ImageSets/val.txt',
                     anchor_interval=0)


@pytest.mark.parametrize('inside', ['Annotations/480p', 'JPEGImages/480p/a',
                                    'Annotations/480p/b/x'])
def test_results_never_go_over_the_data(two_videos, inside):
    """Whoever drives the metric (mmdet's tools check nothing), an
    output_dir that is, holds or lies inside a video's frames or
    annotations is refused before anything is written."""
    root, videos = two_videos
    dataset = DAVISDataset(data_root=str(root), ann_file='ImageSets/val.txt')
    before = sorted(p.relative_to(root) for p in root.rglob('*'))
    preds = {name: masks for name, (_, masks) in videos.items()}
    samples = samples_for(dataset, preds)
    if inside.endswith('/x'):
        samples = [s for s in samples if s['video'] == 'b']
    with pytest.raises(ValueError, match='DAVISMetric output_dir'):
        DAVISMetric(output_dir=str(root / inside)).process({}, samples)
    assert sorted(p.relative_to(root) for p in root.rglob('*')) == before


@pytest.mark.parametrize('bound_th, match', [
    # NaN failed as "cannot convert float NaN to integer"; -1 scored.
    (float('nan'), 'bound_th must be a finite number >= 0'),
    (-1, 'bound_th must be a finite number >= 0'),
    (float('inf'), 'bound_th must be a finite number >= 0'),
    ('0.008', 'bound_th must be a real number'),
])
def test_bad_boundary_tolerance_is_named(bound_th, match):
    with pytest.raises(ValueError, match=f'^DAVISMetric: {match}'):
        DAVISMetric(bound_th=bound_th)
