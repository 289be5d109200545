import math

import pytest
import torch

from sfc_plugin.models.losses import (
    cell_centers,
    dense_cosine_loss,
    positive_mask,
)


def brute_force_mask(box1, box2, size1, size2, r):
    """Eq. 4 evaluated cell by cell, in float64, straight from its text."""
    (h1, w1), (h2, w2) = size1, size2
    bw1, bh1 = (box1[2] - box1[0]) / w1, (box1[3] - box1[1]) / h1
    bw2, bh2 = (box2[2] - box2[0]) / w2, (box2[3] - box2[1]) / h2
    diag = max(math.sqrt(bw1**2 + bh1**2), math.sqrt(bw2**2 + bh2**2))
    mask = torch.zeros(h1 * w1, h2 * w2, dtype=torch.bool)
    for v1 in range(h1):
        for u1 in range(w1):
            x1 = (u1 + 0.5) * bw1 + box1[0]
            y1 = (v1 + 0.5) * bh1 + box1[1]
            for v2 in range(h2):
                for u2 in range(w2):
                    x2 = (u2 + 0.5) * bw2 + box2[0]
                    y2 = (v2 + 0.5) * bh2 + box2[1]
                    d = math.hypot(x1 - x2, y1 - y2)
                    mask[v1 * w1 + u1, v2 * w2 + u2] = d / diag < r
    return mask


def random_boxes(gen, n, flip=False):
    xy = torch.rand(n, 2, 2, generator=gen, dtype=torch.float64)
    lo, hi = xy.min(1).values, xy.max(1).values
    boxes = torch.cat([lo, hi], dim=1)
    if flip:
        boxes = boxes[:, [2, 1, 0, 3]]
    return boxes


@pytest.mark.parametrize('size1,size2,radius,flip', [
    ((8, 8), (8, 8), 0.5, False),
    ((5, 7), (6, 3), 0.5, False),
    ((8, 8), (8, 8), 1.3, True),
    ((4, 4), (4, 4), 0.2, False),
])
def test_positive_mask_equals_formula(size1, size2, radius, flip):
    gen = torch.Generator().manual_seed(0)
    b1 = random_boxes(gen, 6, flip=flip)
    b2 = random_boxes(gen, 6)
    # Give two pairs large overlap so positives are plentiful.
    b2[:2] = b1[:2, [0, 1, 2, 3]].clone()
    b2[:2, [0, 2]] = b2[:2, [0, 2]].sort(dim=1).values
    mask = positive_mask(b1, b2, size1, size2, radius)
    assert mask.shape == (6, size1[0] * size1[1], size2[0] * size2[1])
    for i in range(6):
        expected = brute_force_mask(b1[i].tolist(), b2[i].tolist(), size1,
                                    size2, radius)
        assert torch.equal(mask[i], expected), i
    assert mask[:2].any()


def test_identical_views_pair_each_cell_with_itself():
    box = torch.tensor([[0.1, 0.2, 0.7, 0.9]], dtype=torch.float64)
    mask = positive_mask(box, box, (8, 8), (8, 8), 0.5)
    assert torch.equal(mask[0], torch.eye(64, dtype=torch.bool))


def test_disjoint_views_have_no_positives():
    b1 = torch.tensor([[0.0, 0.0, 0.4, 0.4]])
    b2 = torch.tensor([[0.6, 0.6, 1.0, 1.0]])
    assert not positive_mask(b1, b2, (8, 8), (8, 8), 0.5).any()


def test_flipped_box_reverses_columns():
    box = torch.tensor([[0.2, 0.2, 0.6, 0.6]])
    flipped = box[:, [2, 1, 0, 3]]
    c, _ = cell_centers(box, (4, 4))
    cf, _ = cell_centers(flipped, (4, 4))
    grid = c[0].view(4, 4, 2)
    grid_f = cf[0].view(4, 4, 2)
    assert torch.allclose(grid_f, grid.flip(1))
    mask = positive_mask(box, flipped, (4, 4), (4, 4), 0.5)
    # Cell (v, u) of the view matches cell (v, 3 - u) of its mirror image.
    expected = torch.eye(16, dtype=torch.bool).view(16, 4, 4).flip(2)
    assert torch.equal(mask[0], expected.reshape(16, 16))


def test_degenerate_box_gives_no_positive_and_no_nan():
    point = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    mask = positive_mask(point, point, (4, 4), (4, 4), 0.5)
    assert not mask.any()
    loss = dense_cosine_loss(torch.randn(1, 3, 16), torch.randn(1, 3, 16),
                             mask)
    assert loss.item() == 0.0


def test_loss_on_hand_built_inputs():
    # Two positions per view, 2-d features.
    p = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # p0 = (1, 0), p1 = (0, 2)
    z = torch.tensor([[[3.0, 1.0], [0.0, 1.0]]])  # z0 = (3, 0), z1 = (1, 1)
    # cos(p0, z0) = 1, cos(p0, z1) = 1/√2, cos(p1, z0) = 0, cos(p1, z1) = 1/√2
    mask = torch.tensor([[[True, True], [False, True]]])
    expected = -(1 + 2 / math.sqrt(2)) / (3 + 1e-6)
    assert dense_cosine_loss(p, z, mask).item() == pytest.approx(expected)
    only_first = torch.tensor([[[True, False], [False, False]]])
    assert dense_cosine_loss(p, z, only_first).item() == pytest.approx(
        -1 / (1 + 1e-6))


def test_loss_is_scale_invariant_and_float32_under_half_inputs():
    gen = torch.Generator().manual_seed(1)
    p = torch.randn(2, 8, 5, generator=gen)
    z = torch.randn(2, 8, 7, generator=gen)
    mask = torch.rand(2, 5, 7, generator=gen) > 0.5
    ref = dense_cosine_loss(p, z, mask)
    assert torch.allclose(dense_cosine_loss(3 * p, 0.1 * z, mask), ref,
                          atol=1e-6)
    half = dense_cosine_loss(p.bfloat16(), z.bfloat16(), mask)
    assert half.dtype == torch.float32
    assert torch.allclose(half, ref, atol=2e-2)


def test_positive_mask_equals_the_cdist_definition():
    """Distances written out (torch.cdist's direct CUDA kernel took 60% of
    a training step): the same mask as cdist's exact distances on random
    crops of odd sizes (they differ by at most an ulp, never at a random
    threshold)."""
    from sfc_plugin.models.losses.dense_correspondence import cell_centers
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        boxes1, boxes2 = torch.rand(2, 5, 4, generator=gen)
        size1 = tuple(torch.randint(1, 40, (2, ), generator=gen).tolist())
        size2 = tuple(torch.randint(1, 40, (2, ), generator=gen).tolist())
        c1, d1 = cell_centers(boxes1, size1)
        c2, d2 = cell_centers(boxes2, size2)
        dist = torch.cdist(c1, c2, compute_mode='donot_use_mm_for_euclid_dist')
        expected = dist < 0.5 * torch.maximum(d1, d2)[:, None, None]
        assert torch.equal(positive_mask(boxes1, boxes2, size1, size2),
                           expected)
