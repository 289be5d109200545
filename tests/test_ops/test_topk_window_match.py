import math

import pytest
import torch
import torch.nn.functional as F

from sfc_plugin.ops import (
    topk_window_match,
    topk_window_match_dense,
    window_mask,
)


def unit(x, dim):
    return F.normalize(x, dim=dim)


def brute_force(query, keys, labels, topk, radius, temperature, unrestricted):
    """Position by position, in float64, straight from the definition."""
    t_frames, _, h, w = keys.shape
    out = torch.zeros(labels.shape[1], h, w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            cands = []
            for t in range(t_frames):
                for ky in range(h):
                    for kx in range(w):
                        if t >= unrestricted and math.hypot(
                                ky - y, kx - x) >= radius:
                            continue
                        a = float(query[:, y, x] @ keys[t, :, ky, kx])
                        cands.append((a / temperature, labels[t, :, ky, kx]))
            if not cands:
                continue
            cands.sort(key=lambda c: -c[0])
            top = cands[:topk]
            wts = torch.softmax(torch.tensor([c[0] for c in top]), 0)
            out[:, y, x] = sum(wt * c[1] for wt, c in zip(wts, top))
    return out


def random_inputs(seed, t_frames, channels, h, w, num_labels):
    gen = torch.Generator().manual_seed(seed)
    query = unit(torch.randn(channels, h, w, generator=gen,
                             dtype=torch.float64), 0)
    keys = unit(torch.randn(t_frames, channels, h, w, generator=gen,
                            dtype=torch.float64), 1)
    labels = torch.softmax(
        3 * torch.randn(t_frames, num_labels, h, w, generator=gen,
                        dtype=torch.float64), 1)
    return query, keys, labels


@pytest.mark.parametrize('t_frames,channels,h,w,num_labels,topk,radius,'
                         'unrestricted', [
                             (3, 8, 5, 7, 2, 4, 2.0, 1),
                             (4, 5, 7, 4, 3, 10, 1.5, 2),
                             (1, 4, 6, 5, 1, 3, 2.0, 1),
                             (1, 4, 6, 5, 2, 3, 2.0, 0),
                             (3, 6, 4, 9, 20, 50, 3.0, 0),
                             (2, 6, 5, 5, 2, 7, 0.0, 1),
                             (3, 3, 3, 3, 2, 1000, 1.0, 1),
                         ])
@pytest.mark.parametrize('impl', [
    topk_window_match, topk_window_match_dense,
    lambda *a, **k: topk_window_match(*a, tile_size=3, **k),
    lambda *a, **k: topk_window_match(*a, tile_size=1, **k),
], ids=['tiled', 'dense', 'tile3', 'tile1'])
def test_matches_definition(impl, t_frames, channels, h, w, num_labels, topk,
                            radius, unrestricted):
    query, keys, labels = random_inputs(t_frames * 100 + h, t_frames,
                                        channels, h, w, num_labels)
    got = impl(query, keys, labels, topk=topk, radius=radius,
               temperature=0.07, unrestricted_keys=unrestricted)
    expected = brute_force(query, keys, labels, topk, radius, 0.07,
                           unrestricted)
    assert got.shape == (num_labels, h, w)
    assert torch.allclose(got, expected, atol=1e-10)


def test_channels_last_keys_and_fractional_radius():
    query, keys, labels = random_inputs(5, 4, 6, 9, 10, 3)
    expected = brute_force(query, keys, labels, 7, 2.5, 0.1, 1)
    got = topk_window_match(query, keys.to(memory_format=torch.channels_last),
                            labels, topk=7, radius=2.5, temperature=0.1)
    assert torch.allclose(got, expected, atol=1e-10)


def test_no_eligible_key_gives_zero_labels():
    query, keys, labels = random_inputs(0, 2, 4, 3, 3, 2)
    out = topk_window_match(query, keys, labels, topk=5, radius=0.0,
                            temperature=0.1, unrestricted_keys=0)
    assert torch.equal(out, torch.zeros_like(out))


def test_ties_with_equal_labels_are_order_independent():
    query, keys, labels = random_inputs(1, 3, 4, 4, 4, 2)
    keys[1] = keys[0]
    labels[1] = labels[0]
    out = topk_window_match(query, keys, labels, topk=6, radius=2.0,
                            temperature=0.1, unrestricted_keys=2)
    expected = brute_force(query, keys, labels, 6, 2.0, 0.1, 2)
    assert torch.allclose(out, expected, atol=1e-10)


def test_float32_agrees_with_float64():
    query, keys, labels = random_inputs(2, 5, 16, 9, 11, 3)
    ref = topk_window_match(query, keys, labels, topk=10, radius=3.0,
                            temperature=0.05)
    got = topk_window_match(query.float(), keys.float(), labels.float(),
                            topk=10, radius=3.0, temperature=0.05)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), ref, atol=1e-4)


def test_window_mask():
    m = window_mask(3, 4, 1.5)
    assert m.shape == (12, 12)
    # Position (1, 1): itself, its 4 neighbours and its 4 diagonals (√2).
    assert m[5].sum() == 9
    assert not window_mask(3, 4, 0.0).any()
    assert torch.equal(window_mask(3, 4, 1.5, rows=slice(4, 6)), m[4:6])


@pytest.mark.parametrize('kwargs,match', [
    (dict(query=torch.zeros(4, 3)), 'query must be'),
    (dict(keys=torch.zeros(2, 5, 3, 3)), 'do not match query'),
    (dict(key_labels=torch.zeros(3, 2, 3, 3)), 'do not match keys'),
    (dict(topk=0), 'topk'),
    (dict(radius=-1.0), 'radius'),
    (dict(temperature=0.0), 'temperature'),
    (dict(unrestricted_keys=3), 'unrestricted_keys'),
])
def test_bad_arguments_are_named(kwargs, match):
    args = dict(query=torch.zeros(4, 3, 3), keys=torch.zeros(2, 4, 3, 3),
                key_labels=torch.zeros(2, 2, 3, 3), topk=2, radius=1.0,
                temperature=0.1, unrestricted_keys=1)
    args.update(kwargs)
    q, k, lab = args.pop('query'), args.pop('keys'), args.pop('key_labels')
    with pytest.raises(ValueError, match=match):
        topk_window_match(q, k, lab, **args)
