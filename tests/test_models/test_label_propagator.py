import pytest
import torch
import torch.nn.functional as F

from sfc_plugin.models import LabelPropagator
from sfc_plugin.ops import window_mask


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
