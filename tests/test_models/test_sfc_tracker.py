import json
import subprocess

import pytest
import torch
import torch.nn.functional as F
from mmengine.structures import BaseDataElement

from sfc_plugin.registry import MODELS
from sfc_plugin.utils import register_all_modules

register_all_modules()


class PixelEncoder(torch.nn.Module):
    """Features = the normalised colour of each 8×8 cell (test double)."""

    out_channels = 3

    def forward(self, images):
        return F.normalize(F.avg_pool2d(images, 8, ceil_mode=True) + 1e-3,
                           dim=1)


def build_tracker(codec):
    MODELS.register_module('PixelEncoder', module=PixelEncoder, force=True)
    return MODELS.build(
        dict(
            type='SFCTracker',
            encoder=dict(type='PixelEncoder'),
            propagator=dict(type='LabelPropagator', topk=4, radius=3,
                            context_frames=2, temperature=0.05),
            label_codec=codec))


@pytest.fixture()
def tracker():
    return build_tracker(dict(type='MaskCodec'))


def scene(shift, h=64, w=80):
    """Red object on the left half, blue object on the right, grey ground."""
    img = torch.full((3, h, w), 0.2)
    labels = torch.zeros(h, w, dtype=torch.long)
    img[:, 16:48, 8 + shift:32 + shift] = torch.tensor([1., 0, 0])[:, None,
                                                                 None]
    labels[16:48, 8 + shift:32 + shift] = 1
    img[:, 16:48, 48 + shift:72 + shift] = torch.tensor([0., 0, 1])[:, None,
                                                                  None]
    labels[16:48, 48 + shift:72 + shift] = 2
    return img, labels


def test_init_and_track_follow_two_objects(tracker):
    frame0, labels0 = scene(0)
    tracker.init(frame0, labels0)
    for shift in (0, 2, 4):
        frame, labels = scene(shift)
        pred = tracker.track(frame)
        assert pred.shape == labels.shape
        assert (pred == labels).float().mean() > 0.9


def test_predict_over_a_video_batch(tracker):
    frames, samples = [], []
    for t in range(3):
        img, labels = scene(2 * t)
        frames.append(img)
        s = BaseDataElement(metainfo=dict(video='v', frame_id=t,
                                          video_length=3))
        if t == 0:
            s.gt_seg_map = labels.to(torch.uint8)
        samples.append(s)
    out = tracker.predict(torch.stack(frames), samples)
    assert torch.equal(out[0].pred_seg_map, scene(0)[1].to(torch.uint8))
    assert out[2].pred_seg_map.dtype == torch.uint8
    assert (out[2].pred_seg_map == scene(4)[1]).float().mean() > 0.9


def test_frames_too_large_to_encode_are_refused(tracker, monkeypatch):
    """A frame whose encoding the host memory left cannot hold is refused
    at frame 0, naming its size, before the encoder runs."""
    from sfc_plugin.utils import memory
    frame0, labels0 = scene(0)
    # PixelEncoder: 3 channels per 8 x 8 cell; frame 3 x 64 x 80 float32.
    need = 64 * 80 * (8 * 3 / 64 + 3) * 4
    monkeypatch.setattr(memory, 'available_host_memory',
                        lambda: int(need) - 1)
    with pytest.raises(memory.HostMemoryError,
                       match=r'^SFCTracker: encoding 80×64 frames with '
                       r'PixelEncoder need 67\.5 KiB of host memory, .*; '
                       r'downscale the video'):
        tracker.init(frame0, labels0)
    monkeypatch.setattr(memory, 'available_host_memory', lambda: int(need))
    tracker.init(frame0, labels0)


@pytest.mark.parametrize('config', ['fc_davis.py', 'sfc_davis.py'])
def test_encoder_memory_estimate_bounds_its_measured_peak(
        config, python, subprocess_env):
    """The estimate the check above uses is above what a 1080p frame's
    encoding takes (peak RSS of a fresh process, random weights)."""
    code = f"""
import json, resource, torch
from sfc_plugin.apis import init_tracker, tracker_config
from sfc_plugin.models.trackers.sfc_tracker import _activations_per_pixel
model = init_tracker(tracker_config({config!r}), 'cpu')
per_pixel = _activations_per_pixel(model.encoder)
frame = torch.randn(1, 3, 1080, 1920)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with torch.no_grad():
    model.encoder(frame)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(dict(measured=peak - base + frame.numel() * 4,
                      estimate=1080 * 1920 * 4 * (
                          model.PEAK_ACTIVATIONS * per_pixel + 3))))
"""
    proc = subprocess.run([python, '-c', code], env=subprocess_env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(proc.stdout.splitlines()[-1])
    assert figures['measured'] <= figures['estimate'], figures


def test_misuse_is_reported(tracker):
    with pytest.raises(RuntimeError, match='before init'):
        tracker.track(scene(0)[0])
    frame, labels = scene(0)
    with pytest.raises(ValueError, match='differ in size'):
        tracker.init(frame, labels[:-8])
    tracker.init(frame, labels)
    with pytest.raises(ValueError, match="first frame's"):
        tracker.track(frame[:, :-8])
    sample = BaseDataElement(metainfo=dict(video='v', frame_id=0))
    with pytest.raises(KeyError, match='video "v"'):
        tracker.predict(frame[None], [sample])


def test_empty_first_mask_gives_background(tracker):
    frame, _ = scene(0)
    tracker.init(frame, torch.zeros(64, 80, dtype=torch.long))
    assert not tracker.track(frame).any()



def test_many_objects_keep_their_ids():
    """12 objects of distinct colours on a 3 × 4 grid, moving together."""
    colours = torch.rand(12, 3, generator=torch.Generator().manual_seed(0))
    tracker = build_tracker(dict(type='MaskCodec'))

    def grid(shift):
        img = torch.full((3, 120, 160), 0.05)
        labels = torch.zeros(120, 160, dtype=torch.long)
        for k in range(12):
            y, x = 8 + 40 * (k // 4), 8 + 40 * (k % 4) + shift
            img[:, y:y + 24, x:x + 24] = colours[k][:, None, None] + 0.1
            labels[y:y + 24, x:x + 24] = k + 1
        return img, labels

    tracker.init(*grid(0))
    for shift in (0, 2, 4):
        frame, labels = grid(shift)
        pred = tracker.track(frame)
        # Objects bleed into the background by up to a stride (8 px).
        assert (pred == labels).float().mean() > 0.85
        for k in range(1, 13):
            assert (pred[labels == k] == k).float().mean() > 0.8, k


def test_keypoints_follow_their_objects():
    """Two textured objects move 8 px a frame over a textured background.

    Texture: a random 16-channel vector per 8 × 8 cell (the test encoder
    takes any number of channels), so every cell has its own feature.
    """
    tracker = build_tracker(dict(type='KeypointCodec', sigma=0.5, stride=8))
    gen = torch.Generator().manual_seed(1)
    background = torch.randn(16, 8, 14, generator=gen)
    objects = torch.randn(2, 16, 3, 3, generator=gen)

    def textured(shift):
        img = F.interpolate(background[None], scale_factor=8.0)[0]
        for k, x0 in enumerate((8, 56)):
            patch = F.interpolate(objects[k][None], scale_factor=8.0)[0]
            img[:, 16:40, x0 + shift:x0 + shift + 24] = patch
        return img

    # Centres of a cell of each object.
    joints = torch.tensor([[19.5, 27.5], [67.5, 19.5]])
    tracker.init(textured(0), joints)
    for shift in (8, 16):
        pred = tracker.track(textured(shift))
        assert pred.shape == (2, 2)
        expected = joints + torch.tensor([shift, 0.0])
        assert (pred - expected).abs().max() < 2, (shift, pred)


def test_part_maps_keep_classes_absent_from_frame_0():
    tracker = build_tracker(dict(type='MaskCodec', num_classes=5))
    frame, labels = scene(0)
    tracker.init(frame, labels)
    soft = tracker.track_soft(frame)
    assert soft.shape[0] == 5 and not soft[3:].any()
    pred = tracker.track(frame)
    assert set(pred.unique().tolist()) == {0, 1, 2}
    tracker.init(frame, labels)
    with pytest.raises(ValueError, match='out of range for num_classes=2'):
        build_tracker(dict(type='MaskCodec', num_classes=2)).init(
            frame, labels)


def _fc_training_model():
    from mmengine.config import Config
    cfg = Config.fromfile('configs/fc_ytvos.py')
    torch.manual_seed(1)
    return MODELS.build(cfg.model)


def _tracker_from(config):
    from mmengine.config import Config
    torch.manual_seed(2)
    return MODELS.build(Config.fromfile(config).model)


@pytest.mark.parametrize('config', ['configs/fc_davis.py',
                                    'configs/sfc_davis.py'])
def test_runner_checkpoint_of_the_fc_network_goes_into_it(config, tmp_path):
    """A training checkpoint loaded into the whole tracker (mmengine's
    load_from, mmdet's --checkpoint) fills its FC network; a fused
    tracker's semantic network keeps its weights."""
    from mmengine.runner import load_checkpoint

    fc = _fc_training_model()
    ckpt = tmp_path / 'iter_1.pth'
    torch.save({'meta': {'iter': 1}, 'state_dict': fc.state_dict()}, ckpt)
    tracker = _tracker_from(config)
    before = {k: v.clone() for k, v in tracker.state_dict().items()}
    load_checkpoint(tracker, str(ckpt), map_location='cpu', strict=True)
    encoder = getattr(tracker.encoder, 'fine_grained', tracker.encoder)
    for key, value in encoder.backbone.state_dict().items():
        assert torch.equal(value, fc.backbone.state_dict()[key]), key
    fc_prefix = 'encoder.fine_grained.' if 'sfc' in config else 'encoder.'
    changed = {k for k, v in tracker.state_dict().items()
               if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(fc_prefix) for k in changed)
    # The tracker's own state dict loads as it is.
    other = _tracker_from(config)
    other.load_state_dict(tracker.state_dict())
    assert all(torch.equal(v, tracker.state_dict()[k])
               for k, v in other.state_dict().items())


def test_runner_checkpoint_of_another_network_is_refused():
    from sfc_plugin.models.encoders import CheckpointKeyError
    tracker = _tracker_from('configs/fc_davis.py')
    with pytest.raises(CheckpointKeyError, match='no prefix holding all'):
        tracker.load_state_dict({'conv.weight': torch.zeros(3, 3, 1, 1)})


def entering_scene(t, h=64, w=80):
    """The two-object scene of :func:`scene`, plus a green object that
    enters from frame 3 on (ids 1, 2 and 3)."""
    img, labels = scene(t)
    if t >= 3:
        img[:, 48:64, 32:48] = torch.tensor([0., 1, 0])[:, None, None]
        labels[48:64, 32:48] = 3
    return img, labels


def test_anchor_replaces_the_prediction_at_its_frame(tracker):
    frame0, labels0 = scene(0)
    tracker.init(frame0, labels0)
    tracker.track(scene(1)[0])
    given = torch.zeros_like(labels0)
    given[10:20, 10:20] = 2  # nothing like what the tracker would say
    out = tracker.anchor(scene(2)[0], given)
    assert out.dtype == torch.uint8 and torch.equal(out.long(), given)
    assert tracker.propagator.num_anchors == 1


def test_object_entering_at_an_anchor_is_tracked_after_it(tracker):
    frame0, labels0 = entering_scene(0)
    tracker.init(frame0, labels0)
    before = [tracker.track(entering_scene(t)[0]) for t in (1, 2, 3)]
    assert all(3 not in p.unique().tolist() for p in before)
    frame4, labels4 = entering_scene(4)
    tracker.anchor(frame4, labels4)
    for t in (5, 6):
        frame, labels = entering_scene(t)
        pred = tracker.track(frame)
        new, predicted = labels == 3, pred == 3
        iou = (new & predicted).sum() / (new | predicted).sum()
        assert iou > 0.8
        assert (pred == labels).float().mean() > 0.9


def test_complete_anchor_ends_the_objects_it_lacks(tracker):
    frame0, labels0 = scene(0)
    tracker.init(frame0, labels0)
    frame1, labels1 = scene(1)
    only_red = torch.where(labels1 == 1, 1, 0)
    tracker.anchor(frame1, only_red, complete=True)
    for t in (2, 3):
        pred = tracker.track(scene(t)[0])
        assert 2 not in pred.unique().tolist()
    # Without `complete`, the object absent from the anchor stays tracked.
    tracker.init(frame0, labels0)
    tracker.anchor(frame1, only_red)
    pred = tracker.track(scene(2)[0])
    assert (pred == scene(2)[1]).float().mean() > 0.9


def test_anchors_beyond_the_bound_evict_the_oldest_and_memory_stays_flat():
    """Frame 0 is kept, the other anchors are a first-in first-out queue of
    max_anchors frames; memory is 1 + max_anchors + m frames whatever the
    number of anchors (50 here)."""
    from sfc_plugin.models import LabelPropagator
    prop = LabelPropagator(topk=4, radius=2, context_frames=3,
                           temperature=0.1, max_anchors=2)
    c, h, w = 8, 5, 6
    torch.manual_seed(0)

    def frame():
        return F.normalize(torch.randn(c, h, w), dim=0)

    def labels(k):
        return torch.full((1, h, w), float(k))

    f0 = frame()
    prop.init(f0, labels(0))
    sizes, anchors = set(), []
    for i in range(1, 51):
        f = frame()
        prop.anchor(f, labels(i))
        anchors.append((f, i))
        prop.step(frame())
        if i >= 2:
            sizes.add((prop._feats.numel(), prop._labels.numel()))
    assert prop.num_anchors == 2
    assert sizes == {((1 + 2 + 3) * c * h * w, (1 + 2 + 3) * h * w)}
    assert torch.equal(prop._feats[0], f0)
    assert prop._labels[0].unique().tolist() == [0.0]
    # Slots 1, 2: the two latest anchors, oldest first.
    for slot, (f, i) in zip((1, 2), anchors[-2:]):
        assert torch.equal(prop._feats[slot], f)
        assert prop._labels[slot].unique().tolist() == [float(i)]


def test_anchors_join_frame_zero_as_unrestricted_keys():
    """After an anchor, a step matches against frame 0 and the anchor
    without the window, the short-term frames within it: as the op with
    1 + anchors unrestricted keys."""
    from sfc_plugin.models import LabelPropagator
    from sfc_plugin.ops import topk_window_match_reference
    torch.manual_seed(1)
    c, h, w, k = 6, 7, 9, 3

    def frame():
        return F.normalize(torch.randn(c, h, w, dtype=torch.float64), dim=0)

    def soft():
        return torch.softmax(torch.randn(k, h, w, dtype=torch.float64), 0)

    prop = LabelPropagator(topk=5, radius=1, context_frames=2,
                           temperature=0.1, max_anchors=3)
    f0, l0, f1, f2, l2, f3 = frame(), soft(), frame(), frame(), soft(), \
        frame()
    prop.init(f0, l0)
    p1 = prop.step(f1)
    prop.anchor(f2, l2)
    got = prop.step(f3)
    keys = torch.stack([f0, f2, f1, f2])  # frame 0, anchor, ring (1, 2)
    key_labels = torch.stack([l0, l2, p1, l2])
    want = topk_window_match_reference(f3, keys, key_labels, topk=5,
                                       radius=1, temperature=0.1,
                                       unrestricted_keys=2)
    assert torch.allclose(got, want, atol=1e-12)


def _resnet_tracker(precision):
    from mmengine.config import Config
    cfg = Config.fromfile('configs/fc_davis.py').model
    cfg.precision = precision
    torch.manual_seed(0)
    return MODELS.build(cfg).eval()


def test_bf16_keeps_features_in_half_the_memory_and_the_masks():
    """bf16: the encoder's folded bf16 copy, features (the context memory)
    in bf16, labels in float32; masks agree with fp32 on nearly all
    pixels."""
    frames, labels = zip(*[scene(s, 96, 128) for s in (0, 2, 4)])
    preds = {}
    for precision in ('fp32', 'bf16'):
        tracker = _resnet_tracker(precision)
        tracker.init(frames[0], labels[0])
        preds[precision] = [tracker.track(f) for f in frames[1:]]
        feats, soft = tracker.propagator._feats, tracker.propagator._labels
        assert soft.dtype == torch.float32
        assert feats.dtype == tracker.PRECISIONS[precision]
    agree = torch.stack([(a == b).float().mean() for a, b in zip(
        preds['fp32'], preds['bf16'])]).mean()
    assert agree > 0.97


@pytest.mark.parametrize('layout', ['hwc', 'chw', 'strided'])
def test_reduced_precision_runs_the_encoder_channels_last(layout):
    """Whatever the frame's layout, bf16 gives the encoder a channels-last
    batch with the strides of one: a frame decoded as (H, W, C) and
    permuted passed for NCHW by its batch stride, and the network ran
    in NCHW."""
    from sfc_plugin.models.trackers.sfc_tracker import channels_last_batch
    tracker = _resnet_tracker('bf16')
    image = torch.randn(40, 56, 3)
    frame = {'hwc': image.permute(2, 0, 1),
             'chw': image.permute(2, 0, 1).contiguous(),
             'strided': image.permute(2, 0, 1)[:, ::2, ::2]}[layout]
    c, h, w = frame.shape
    batch = channels_last_batch(frame)
    assert batch.stride() == (c * h * w, 1, w * c, c)
    assert torch.equal(batch[0], frame)
    if layout == 'hwc':  # viewed, not copied
        assert batch.data_ptr() == frame.data_ptr()
    seen = []
    network = tracker._reduced_precision_encoder(tracker.encoder,
                                                 torch.bfloat16)
    network.backbone.conv1.register_forward_hook(
        lambda module, args, out: seen.append((args[0], out)))
    feat = tracker.extract_feat(frame)
    images, out = seen[0]
    assert images.stride() == batch.stride()
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(images, batch.to(torch.bfloat16))
    assert torch.equal(channels_last_batch(frame, torch.bfloat16), images)
    assert feat.dtype == torch.bfloat16


def test_reduced_precision_follows_the_trackers_weights():
    """The folded bf16 copy is remade when the tracker's weights change,
    and in training mode (batch statistics) the encoder runs under
    autocast."""
    from sfc_plugin.models.trackers.sfc_tracker import channels_last_batch
    tracker = _resnet_tracker('bf16')
    frame = torch.randn(3, 40, 56)

    def autocast_features():
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
            return tracker.encoder(channels_last_batch(frame))[0]

    def close(a, b):  # bf16 features of unit norm, rounded differently
        return (a.float() - b.float()).abs().max() < 0.05

    first = tracker.extract_feat(frame)
    assert close(first, autocast_features())
    state = tracker.state_dict()
    for key, value in state.items():
        if key.startswith('encoder.') and value.is_floating_point():
            state[key] = value + 0.1 * torch.randn_like(value).abs()
    tracker.load_state_dict(state)
    changed = tracker.extract_feat(frame)
    assert not close(changed, first)
    assert close(changed, autocast_features())
    tracker.train()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        batch_statistics = tracker.encoder(channels_last_batch(frame))[0]
    assert torch.equal(tracker.extract_feat(frame),
                       batch_statistics.to(torch.bfloat16))


def test_precision_settings_are_checked():
    with pytest.raises(ValueError, match='precision must be one of'):
        _resnet_tracker('int8')
    tracker = _resnet_tracker('fp16')
    with pytest.raises(ValueError, match='fp16 needs a CUDA device'):
        tracker.init(*scene(0))


def test_mask_decoding_takes_the_first_of_equal_maxima():
    """Ties go to the lower id, as argmax's do (the decoding reduces with
    max(0).indices, which is faster and defined the same way)."""
    from sfc_plugin.models import MaskCodec
    soft = torch.rand(5, 6, 7)
    soft[3] = soft[1] = soft.max(0).values + 1  # channels 1 and 3 tie
    soft[:, 0, 0] = 0.25  # all five tie: background, the first
    ids = MaskCodec().decode(soft, (6, 7))
    assert ids[0, 0] == 0
    ids[0, 0] = 1
    assert (ids == 1).all()
    rand = torch.rand(5, 12, 14)
    assert torch.equal(MaskCodec().decode(rand, (30, 40)).long(),
                       F.interpolate(rand[None], size=(30, 40),
                                     mode='bilinear',
                                     align_corners=False)[0].argmax(0))


class _HostCopyLog(torch.Tensor):
    """A prediction that logs its copies to host memory."""
    copies = []

    def cpu(self, *args, **kwargs):
        _HostCopyLog.copies.append(self.shape)
        return super().cpu(*args, **kwargs)


def test_results_on_device_leave_the_copy_to_the_caller(tracker, monkeypatch):
    decode = tracker.codec.decode
    monkeypatch.setattr(tracker.codec, 'decode',
                        lambda *a: decode(*a).as_subclass(_HostCopyLog))
    frames, samples = [], []
    for t in range(3):
        img, labels = scene(2 * t)
        frames.append(img)
        samples.append(BaseDataElement(metainfo=dict(
            video='v', frame_id=t, video_length=3),
            gt_seg_map=labels.to(torch.uint8)))
    _HostCopyLog.copies.clear()
    with tracker.results_on_device():
        with tracker.results_on_device():
            pass
        out = tracker.predict(torch.stack(frames), samples)
    assert _HostCopyLog.copies == []
    assert type(out[2].pred_seg_map) is _HostCopyLog
    # Outside, mmengine's contract: host tensors, copied by predict; also
    # after an error inside.
    with pytest.raises(RuntimeError, match='inside'):
        with tracker.results_on_device():
            raise RuntimeError('inside')
    tracker.predict(torch.stack(frames), samples)
    assert _HostCopyLog.copies == [(64, 80)] * 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
@pytest.mark.parametrize('precision', ['fp32', 'bf16'])
def test_cuda_tracking_steps_never_wait_for_the_device(precision):
    """Past its warm-up (cuDNN's choices, the kernels' first launches) a
    frame's whole test step is queued without the host waiting for the
    device: the pinned frame's copy, normalisation, encoder, match,
    decoding and its prediction's copy back. Predictions as without."""
    from sfc_plugin.utils.host_copy import HostCopy, pinned_for
    device = torch.device('cuda')

    def data(t):
        img, labels = scene(2 * t, 96, 128)
        frame = pinned_for((255 * img).to(torch.uint8), device)
        sample = BaseDataElement(metainfo=dict(video='v', frame_id=t,
                                               video_length=8))
        if t == 0:
            sample.gt_seg_map = labels.to(torch.uint8)
        return dict(inputs=[frame], data_samples=[sample])

    tracker = _resnet_tracker(precision).to(device)
    with tracker.results_on_device():
        for t in range(3):
            tracker.test_step(data(t))
        batches = [data(t) for t in range(3, 8)]
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error')
        try:
            copies = [HostCopy(tracker.test_step(batch)[0].pred_seg_map)
                      for batch in batches]
        finally:
            torch.cuda.set_sync_debug_mode('default')
    got = [copy.wait() for copy in copies]
    tracker = _resnet_tracker(precision).to(device)
    want = [tracker.test_step(data(t))[0].pred_seg_map for t in range(8)]
    for a, b in zip(got, want[3:]):
        assert a.device.type == b.device.type == 'cpu'
        assert torch.equal(a, b)
