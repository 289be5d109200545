"""SFCTracker under mmdet 3.x's tracking contract (real mmdet, full mmcv)."""
import numpy as np
import pytest
import torch
from mmengine.structures import BaseDataElement

from sfc_plugin.registry import MODELS

from .test_sfc_tracker import build_tracker, scene

pytestmark = pytest.mark.mmdet


def track_samples(frames, instances):
    """(1, T, 3, H, W) frames and one TrackDataSample whose frame 0 holds
    ``instances``: a list of (instance id, class, (H, W) mask)."""
    from mmdet.structures import DetDataSample, TrackDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    samples = []
    for t, frame in enumerate(frames):
        size = tuple(frame.shape[-2:])
        sample = DetDataSample(metainfo=dict(
            frame_id=t, video_id=0, img_shape=size, ori_shape=size))
        if t == 0:
            masks = np.stack([m.numpy() for _, _, m in instances])
            sample.gt_instances = InstanceData(
                masks=BitmapMasks(masks.astype(np.uint8), *masks.shape[1:]),
                instances_ids=torch.tensor([i for i, _, _ in instances]),
                labels=torch.tensor([c for _, c, _ in instances]))
        samples.append(sample)
    track = TrackDataSample()
    track.video_data_samples = samples
    return torch.stack(frames)[None], [track]


def test_mmdet_contract_gives_the_masks_of_sfc_plugin_contract(mmdet):
    """Frame 0's gt_instances in, pred_track_instances out: the same masks
    as sfc_plugin's id maps, whatever the instance ids (here 42 and 7,
    given out of order), with their classes and scores."""
    frames, labels = zip(*[scene(s) for s in (0, 2, 4, 6)])
    tracker = build_tracker(dict(type='MaskCodec'))
    ours = [BaseDataElement(metainfo=dict(frame_id=t, video='v'))
            for t in range(len(frames))]
    ours[0].gt_seg_map = labels[0]
    expected = [s.pred_seg_map for s in tracker.predict(
        torch.stack(frames), ours)]

    tracker = build_tracker(dict(type='MaskCodec'))
    inputs, samples = track_samples(
        frames, [(42, 3, labels[0] == 2), (7, 5, labels[0] == 1)])
    out = tracker.predict(inputs, samples)
    assert out is samples
    for t, frame in enumerate(out[0].video_data_samples):
        pred = frame.pred_track_instances
        assert pred.instances_id.tolist() == [7, 42]
        assert pred.labels.tolist() == [5, 3]
        assert pred.masks.dtype == torch.bool
        assert pred.masks.shape == (2, *labels[0].shape)
        for i in range(2):
            assert torch.equal(pred.masks[i], expected[t] == i + 1)
        assert ((pred.scores > 0.5) & (pred.scores <= 1)).all()
        if t == 0:
            assert pred.scores.tolist() == [1.0, 1.0]


def test_annotations_at_the_original_size_and_results_there(mmdet):
    """Annotations loaded after a Resize come at the original size: they
    are resized to the network input, and results come at ``ori_shape``."""
    frames, labels = zip(*[scene(s) for s in (0, 2)])
    big = labels[0].repeat_interleave(2, 0).repeat_interleave(2, 1)
    tracker = build_tracker(dict(type='MaskCodec'))
    inputs, samples = track_samples(frames, [(1, 0, big == 1),
                                             (2, 0, big == 2)])
    for frame in samples[0].video_data_samples:
        frame.set_metainfo(dict(ori_shape=tuple(big.shape)))
    out = tracker.predict(inputs, samples)[0].video_data_samples
    assert out[0].pred_track_instances.masks.shape == (2, *big.shape)
    assert torch.equal(out[0].pred_track_instances.masks[0], big == 1)
    later = out[1].pred_track_instances.masks
    assert later.shape == (2, *big.shape)
    truth = scene(2)[1].repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert (later[1] == (truth == 2)).float().mean() > 0.9


def test_frame_zero_without_objects_is_named(mmdet):
    frames, _ = zip(*[scene(s) for s in (0, 2)])
    tracker = build_tracker(dict(type='MaskCodec'))
    inputs, samples = track_samples(frames, [(1, 0, scene(0)[1] == 1)])
    del samples[0].video_data_samples[0].gt_instances
    with pytest.raises(KeyError, match='LoadTrackAnnotations'):
        tracker.predict(inputs, samples)
    tracker = build_tracker(dict(type='KeypointCodec'))
    inputs, samples = track_samples(frames, [(1, 0, scene(0)[1] == 1)])
    with pytest.raises(ValueError, match='MaskCodec'):
        tracker.predict(inputs, samples)


@pytest.mark.parametrize('config', ['fc_davis_mmdet.py', 'sfc_davis_mmdet.py'])
def test_mmdet_configs_build_every_part_from_sfc_plugin(mmdet, repo, config):
    """Built by mmdet's registry under mmdet's default scope, with no
    `_scope_`: the tracker's parts are sfc_plugin's (mmdet has a ResNet of
    its own), its data preprocessor is mmdet's TrackDataPreprocessor."""
    from mmdet.models.data_preprocessors import TrackDataPreprocessor
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from sfc_plugin.models import (
        CorrespondenceEncoder,
        LabelPropagator,
        MaskCodec,
        ResNet,
        SFCTracker,
    )
    cfg = Config.fromfile(str(repo / 'configs' / 'mmdet' / config))
    assert cfg.default_scope == 'mmdet'
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MMDET_MODELS.build(cfg.model)
    assert type(model) is SFCTracker
    assert isinstance(model.data_preprocessor, TrackDataPreprocessor)
    networks = [m for m in model.modules()
                if isinstance(m, CorrespondenceEncoder)]
    assert len(networks) == (2 if config.startswith('sfc') else 1)
    assert all(type(n.backbone) is ResNet for n in networks)
    assert type(model.propagator) is LabelPropagator
    assert type(model.codec) is MaskCodec


class StubDetector(torch.nn.Module):
    """An mmdet-style detector whose predictions are given (test double)."""

    def __init__(self, masks, scores, labels):
        super().__init__()
        self.masks, self.scores, self.labels = masks, scores, labels
        self.seen = []

    def predict(self, inputs, data_samples, rescale=True):
        from mmengine.structures import InstanceData
        self.seen.append((tuple(inputs.shape), rescale,
                          data_samples[0].metainfo['img_shape']))
        data_samples[0].pred_instances = InstanceData(
            masks=self.masks, scores=self.scores, labels=self.labels)
        return data_samples


def test_detect_then_propagate_takes_frame_zero_from_the_detector(mmdet):
    """Detections above the threshold become objects 1..N by score, the
    best keeping shared pixels; the annotation is not used."""
    MODELS.register_module('StubDetector', module=StubDetector, force=True)
    _, labels = scene(0)
    blob = torch.zeros_like(labels, dtype=torch.bool)
    blob[16:48, 20:40] = True  # overlaps the red object
    masks = torch.stack([labels == 1, labels == 2, blob, labels == 2])
    detector = dict(
        type='FirstFrameDetector', score_thr=0.5,
        model=dict(type='StubDetector', _scope_='sfc_plugin', masks=masks,
                   scores=torch.tensor([0.6, 0.9, 0.7, 0.2]),
                   labels=torch.tensor([1, 2, 3, 4])))
    from mmengine.config import Config
    cfg = Config(dict(model=dict(
        type='SFCTracker', encoder=dict(type='PixelEncoder'),
        propagator=dict(type='LabelPropagator', topk=4, radius=3,
                        context_frames=2, temperature=0.05),
        detector=detector)))
    build_tracker(dict(type='MaskCodec'))  # registers PixelEncoder
    tracker = MODELS.build(cfg.model)
    frames = [scene(s)[0] for s in (0, 2)]
    # Whatever frame 0's annotation says, the detections decide.
    inputs, samples = track_samples(frames, [(9, 0, labels == 0)])
    out = tracker.predict(inputs, samples)[0].video_data_samples
    first = out[0].pred_track_instances
    assert first.instances_id.tolist() == [1, 2, 3]
    assert first.labels.tolist() == [2, 3, 1]
    assert torch.equal(first.masks[0], labels == 2)
    assert torch.equal(first.masks[1], blob)
    assert torch.equal(first.masks[2], (labels == 1) & ~blob)
    assert tracker.detector.detector.seen == [((1, 3, 64, 80), False,
                                               (64, 80))]
    assert out[1].pred_track_instances.masks.shape == (3, 64, 80)
    # sfc_plugin's form too: frame 0 needs no annotation.
    ours = [BaseDataElement(metainfo=dict(frame_id=t, video='v'))
            for t in range(2)]
    preds = tracker.predict(torch.stack(frames), ours)
    assert set(preds[0].pred_seg_map.unique().tolist()) == {0, 1, 2, 3}


def test_first_frame_detector_runs_a_real_mmdet_model(mmdet):
    """mmdet's own Mask R-CNN config (random weights: no download here)
    through FirstFrameDetector: the detector API as mmdet 3.x has it."""
    from sfc_plugin.models.trackers.first_frame_detector import (
        FirstFrameDetector,
    )
    detector = FirstFrameDetector(
        config='mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
        score_thr=0.0, max_objects=5)
    torch.manual_seed(0)
    ids, labels, scores = detector(torch.randn(3, 96, 128))
    assert ids.shape == (96, 128) and ids.dtype == torch.long
    assert len(labels) == len(scores) <= 5
    assert int(ids.max()) <= len(labels)
    assert (scores[:-1] >= scores[1:]).all()


@pytest.mark.parametrize('kwargs, match', [
    (dict(), 'exactly one'),
    (dict(model=dict(type='X'), score_thr=float('nan')), 'score_thr'),
    (dict(model=dict(type='X'), max_objects=0), 'max_objects'),
    (dict(config='/nonexistent/detector.py'), 'detector.py'),
])
def test_first_frame_detector_settings_are_checked(mmdet, kwargs, match):
    from sfc_plugin.models.trackers.first_frame_detector import (
        FirstFrameDetector,
    )
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        FirstFrameDetector(**kwargs)
