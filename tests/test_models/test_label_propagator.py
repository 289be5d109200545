import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sfc_plugin.models import LabelPropagator
from sfc_plugin.ops import window_mask
from sfc_plugin.utils import memory


def dense_reference(feats, labels0, topk, radius, m, temperature,
                    restrict_first):
    """The CRW protocol over a whole video, dense, in float64.

    Keys of frame t: frame 0 (ground truth) + frames t-m .. t-1, indices
    below 0 replaced by frame 0; masked affinity over all keys, top-k,
    softmax, weighted labels; predictions fed back soft.
    """
    n, c, h, w = feats.shape
    preds = [labels0]
    allowed = window_mask(h, w, radius)  # (hw, hw)
    for t in range(1, n):
        idx = [0] + [max(i, 0) for i in range(t - m, t)]
        keys = feats[idx].flatten(2)  # (T, c, hw)
        lbls = torch.stack([preds[i] for i in idx]).flatten(2)  # (T, K, hw)
        q = feats[t].flatten(1)  # (c, hw)
        aff = torch.einsum('cq,tck->qtk', q, keys) / temperature
        mask = allowed[:, None, :].expand_as(aff).clone()
        if not restrict_first:
            mask[:, 0] = True
        aff = aff.masked_fill(~mask, float('-inf')).flatten(1)
        vals, ids = aff.topk(min(topk, aff.shape[1]), dim=1)
        wts = torch.softmax(vals, 1)
        flat = lbls.permute(0, 2, 1).reshape(-1, lbls.shape[1])
        out = torch.einsum('qk,qkl->ql', wts, flat[ids])
        preds.append(out.t().reshape(-1, h, w))
    return preds


@pytest.mark.parametrize('m,restrict_first', [(3, False), (3, True),
                                               (0, False), (8, False)])
def test_streaming_equals_dense_reference(m, restrict_first):
    gen = torch.Generator().manual_seed(m)
    n, c, h, w = 7, 6, 5, 6
    feats = F.normalize(torch.randn(n, c, h, w, generator=gen,
                                    dtype=torch.float64), dim=1)
    labels0 = F.one_hot(torch.randint(0, 3, (h, w), generator=gen),
                        3).permute(2, 0, 1).double()
    prop = LabelPropagator(topk=5, radius=2.0, context_frames=m,
                           temperature=0.1,
                           restrict_first_frame=restrict_first)
    prop.init(feats[0], labels0)
    got = [prop.step(f) for f in feats[1:]]
    expected = dense_reference(feats, labels0, 5, 2.0, m, 0.1,
                               restrict_first)[1:]
    # Frames 1..m are the warm-up, where short-term slots repeat frame 0.
    for t, (a, b) in enumerate(zip(got, expected), start=1):
        assert torch.allclose(a, b, atol=1e-10), f'frame {t}'
    assert prop.frame_index == n - 1


def test_memory_is_bounded_by_the_context():
    prop = LabelPropagator(context_frames=4)
    feat = torch.zeros(8, 3, 3)
    prop.init(feat, torch.zeros(2, 3, 3))
    buffers = (prop._feats.data_ptr(), prop._labels.data_ptr())
    for _ in range(20):
        prop.step(F.normalize(torch.randn(8, 3, 3), dim=0))
    assert prop._feats.shape[0] == 5
    assert (prop._feats.data_ptr(), prop._labels.data_ptr()) == buffers


def test_buffers_beyond_the_host_memory_are_refused(monkeypatch):
    """1 + context_frames frames are preallocated (and filled): a size the
    host cannot hold is refused before allocation with the setting named,
    where the system would kill the process; the propagator keeps the
    video it had. Anchors and new objects grow the buffers and are checked
    the same way."""
    prop = LabelPropagator(context_frames=4, max_anchors=2)
    feat = F.normalize(torch.randn(8, 3, 3), dim=0)
    prop.init(feat, torch.rand(2, 3, 3))
    # 5 frames of 8 float32 channels and 2 label channels at 3 x 3, the
    # labels counted twice (the matching's copy of them): 2160 B.
    monkeypatch.setattr(memory, 'available_host_memory', lambda: 2159)
    big = LabelPropagator(context_frames=4)
    with pytest.raises(
            memory.HostMemoryError,
            match=r'^LabelPropagator\.init: 5 key frames \(1 \+ '
            r'context_frames=4 \+ 0 anchors\) of \(3, 3\) features and 2 '
            r'label channels \(and the matching\'s copy of the labels\) need '
            r'2\.1 KiB of host memory, but 2\.1 KiB is '
            r'available; lower context_frames \(or max_anchors\), track '
            r'fewer objects or keypoints, or downscale the video$'):
        big.init(feat, torch.rand(2, 3, 3))
    with pytest.raises(memory.HostMemoryError, match='context_frames'):
        prop.init(feat, torch.rand(2, 3, 3))
    with pytest.raises(memory.HostMemoryError,
                       match=r'^LabelPropagator\.anchor: 6 key frames '
                       r'\(1 \+ context_frames=4 \+ 1 anchors\)'):
        prop.anchor(feat, torch.rand(2, 3, 3))
    with pytest.raises(memory.HostMemoryError, match='LabelPropagator.anchor'):
        prop.anchor(feat, torch.rand(3, 3, 3))  # a new object
    assert prop.num_anchors == 0 and prop._feats.shape[0] == 5
    monkeypatch.setattr(memory, 'available_host_memory', lambda: 2160)
    LabelPropagator(context_frames=4).init(feat, torch.rand(2, 3, 3))
    prop.step(feat)


def test_misuse_is_reported():
    prop = LabelPropagator()
    with pytest.raises(RuntimeError, match='before init'):
        prop.step(torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match='differ in size'):
        prop.init(torch.zeros(4, 2, 2), torch.zeros(2, 3, 3))
    prop.init(torch.zeros(4, 2, 2), torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="differ from frame 0"):
        prop.step(torch.zeros(4, 3, 2))
    with pytest.raises(ValueError, match='temperature'):
        LabelPropagator(temperature=0)


@pytest.mark.parametrize('kwargs,match', [
    (dict(topk=0), 'topk must be >= 1'),
    (dict(topk=2.5), 'topk must be an integer'),
    (dict(topk=10.0), 'topk must be an integer'),
    (dict(topk='10'), 'topk must be an integer'),
    (dict(topk=True), 'topk must be an integer'),
    (dict(radius=-1), 'radius must be >= 0'),
    (dict(radius=math.nan), 'radius must be >= 0'),
    (dict(radius='12'), 'radius must be a real number'),
    (dict(radius=None), 'radius must be a real number'),
    (dict(radius=10**400), 'radius must be a real number within float range, '
     'got an integer of 401 digits'),
    (dict(temperature=-10**400), 'temperature must be a real number within '
     'float range'),
    (dict(context_frames=-1), 'context_frames must be in'),
    (dict(context_frames=10_001), r'context_frames must be in \[0, 10000\]'),
    (dict(context_frames=2**40), 'context_frames must be in'),
    (dict(context_frames=1.5), 'context_frames must be an integer'),
    (dict(context_frames=None), 'context_frames must be an integer'),
    (dict(temperature=0), 'temperature must be a finite number >= 1e-30'),
    (dict(temperature=math.inf), 'temperature must be a finite number >='),
    (dict(temperature=math.nan), 'temperature must be a finite number >='),
    (dict(temperature='0.05'), 'temperature must be a real number'),
    (dict(restrict_first_frame='no'), 'restrict_first_frame must be a bool'),
    (dict(restrict_first_frame=1), 'restrict_first_frame must be a bool'),
])
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=f'^LabelPropagator: {match}'):
        LabelPropagator(**kwargs)


def test_settings_are_normalised():
    prop = LabelPropagator(topk=np.int64(15), radius=np.float32(15),
                           context_frames=torch.tensor(8), temperature=0.1)
    assert (prop.topk, prop.radius, prop.context_frames) == (15, 15.0, 8)
    assert all(type(v) in (int, float) for v in (prop.topk, prop.radius,
                                                  prop.context_frames,
                                                  prop.temperature))


def test_infinite_radius_means_no_window():
    gen = torch.Generator().manual_seed(5)
    n, c, h, w = 5, 6, 4, 5
    feats = F.normalize(torch.randn(n, c, h, w, generator=gen,
                                    dtype=torch.float64), dim=1)
    labels0 = F.one_hot(torch.randint(0, 3, (h, w), generator=gen),
                        3).permute(2, 0, 1).double()

    def run(radius):
        prop = LabelPropagator(topk=5, radius=radius, context_frames=2,
                               temperature=0.1, restrict_first_frame=True)
        prop.init(feats[0], labels0)
        return [prop.step(f) for f in feats[1:]]

    got = run(math.inf)
    for a, b in zip(got, run(h + w)):
        assert torch.equal(a, b)
    expected = dense_reference(feats, labels0, 5, math.inf, 2, 0.1, True)
    for t, (a, b) in enumerate(zip(got, expected[1:]), start=1):
        assert torch.allclose(a, b, atol=1e-10), f'frame {t}'


@pytest.mark.parametrize('bad', [math.nan, math.inf])
def test_non_finite_features_of_frame_0_are_named(bad):
    """An encoder with NaN weights gives NaN features: say so at init, not
    as the op's 'keys contain NaN' one frame later."""
    feat = F.normalize(torch.randn(8, 3, 4), dim=0)
    feat[2, 1, 1] = bad
    prop = LabelPropagator()
    with pytest.raises(ValueError, match='encoder produced NaN or infinite '
                       'features for frame 0'):
        prop.init(feat, torch.zeros(2, 3, 4))
    labels = torch.zeros(2, 3, 4)
    labels[0, 0, 0] = bad
    with pytest.raises(ValueError, match='labels of frame 0 contain NaN'):
        prop.init(feat.nan_to_num(0.0, 0.0, 0.0), labels)
