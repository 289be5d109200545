import numpy as np
import pytest

from sfc_plugin.evaluation.functional import (
    boundary_f_measure,
    boundary_map,
    boundary_tolerance,
    per_frame_statistics,
    region_similarity,
)


def square(h, w, top, left, size):
    m = np.zeros((h, w), bool)
    m[top:top + size, left:left + size] = True
    return m


def test_region_similarity_hand_built():
    a = square(10, 10, 0, 0, 4)  # 16 px
    b = square(10, 10, 2, 2, 4)  # 16 px, overlap 2×2 = 4
    assert region_similarity(a, b) == pytest.approx(4 / 28)
    assert region_similarity(a, a) == 1.0
    empty = np.zeros((10, 10), bool)
    assert region_similarity(empty, empty) == 1.0
    assert region_similarity(a, empty) == 0.0
    assert region_similarity(empty, a) == 0.0
    one_px = square(10, 10, 5, 5, 1)
    assert region_similarity(one_px, one_px) == 1.0
    assert region_similarity(one_px, square(10, 10, 5, 6, 1)) == 0.0
    batched = region_similarity(np.stack([a, empty]), np.stack([b, empty]))
    assert batched.shape == (2, ) and batched[1] == 1.0


def test_boundary_map_hand_built():
    m = square(6, 6, 1, 1, 3)
    b = boundary_map(m)
    # Inside pixels that differ from east/south/south-east neighbours, and
    # the outside pixels just left of / above the square.
    expected = np.zeros((6, 6), bool)
    expected[0, 0:4] = True   # above the square (south / south-east differ)
    expected[1:4, 0] = True   # left of it (east differs)
    expected[1:4, 3] = True   # its right column (east is outside)
    expected[3, 1:4] = True   # its bottom row (south is outside)
    assert np.array_equal(b, expected)
    assert not boundary_map(np.ones((4, 4), bool)).any()
    assert not boundary_map(np.zeros((4, 4), bool)).any()
    # The last row/column compare one neighbour only; bottom-right never.
    corner = np.zeros((3, 3), bool)
    corner[2, 2] = True
    assert not boundary_map(corner)[2, 2]


def test_boundary_tolerance():
    assert boundary_tolerance((480, 854)) == 8
    assert boundary_tolerance((10, 10)) == 1
    assert boundary_tolerance((480, 854), bound_th=3) == 3
    # Beyond the diagonal (979 px) every pixel is reached already.
    assert boundary_tolerance((480, 854), bound_th=1e9) == 980
    assert boundary_tolerance((480, 854), bound_th=0.5) == 490


@pytest.mark.parametrize('radius', [33, 40, 57, 100, 200])
def test_large_tolerances_dilate_as_the_disk_does(radius):
    """Above 32 px boundaries are dilated through a distance transform (the
    disk's cost grows as r²: 0.44 s a mask at 200 px): the same pixels as
    the disk dilation, on random boundaries of odd sizes, dense and
    sparse."""
    import cv2

    from sfc_plugin.evaluation.functional.davis import _dilate, _disk
    rng = np.random.default_rng(radius)
    for _ in range(6):
        h, w = rng.integers(20, 150, 2)
        boundary = rng.random((h, w)) < rng.choice([0.001, 0.01, 0.1])
        disk = cv2.dilate(boundary.astype(np.uint8), _disk(radius))
        assert np.array_equal(_dilate(boundary, radius), disk.astype(bool))
    empty = np.zeros((30, 40), bool)
    assert not _dilate(empty, radius).any()


def test_boundary_f_measure_with_large_tolerances():
    """The two boundaries are at most 515 px from each other."""
    a, b = square(480, 854, 50, 50, 100), square(480, 854, 300, 500, 100)
    assert boundary_f_measure(a, b, bound_th=1e9) == 1.0
    assert boundary_f_measure(a, b, bound_th=600) == 1.0
    assert boundary_f_measure(a, b, bound_th=500) < 1.0


def test_boundary_f_measure_cases():
    h, w = 100, 100  # tolerance ceil(0.008·141.4) = 2 px
    a = square(h, w, 20, 20, 40)
    assert boundary_f_measure(a, a) == 1.0
    # Shifted by the tolerance: every boundary pixel still matches.
    assert boundary_f_measure(a, square(h, w, 22, 20, 40)) == 1.0
    # Shifted by more: the horizontal edges (1/2 of the boundary) miss.
    f = boundary_f_measure(a, square(h, w, 25, 20, 40))
    assert 0.3 < f < 0.7
    empty = np.zeros((h, w), bool)
    assert boundary_f_measure(empty, empty) == 1.0
    assert boundary_f_measure(a, empty) == 0.0
    assert boundary_f_measure(empty, a) == 0.0
    one_px = square(h, w, 50, 50, 1)
    assert boundary_f_measure(one_px, one_px) == 1.0
    assert boundary_f_measure(one_px, square(h, w, 90, 90, 1)) == 0.0


def test_boundary_f_measure_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(5):
        gt = rng.random((23, 31)) > 0.6
        pred = rng.random((23, 31)) > 0.6
        r = boundary_tolerance(gt.shape)
        gb, pb = boundary_map(gt), boundary_map(pred)
        gy, gx = np.nonzero(gb)
        py, px = np.nonzero(pb)
        d = (gy[:, None] - py[None])**2 + (gx[:, None] - px[None])**2
        within = d <= r * r
        recall = within.any(1).mean()
        precision = within.any(0).mean()
        expected = 2 * precision * recall / (precision + recall)
        assert boundary_f_measure(gt, pred) == pytest.approx(expected)


def test_per_frame_statistics():
    s = per_frame_statistics(np.array([1.0, 1.0, 0.8, 0.6, 0.4, 0.2, 0.0,
                                       0.0]))
    assert s['mean'] == pytest.approx(0.5)
    assert s['recall'] == pytest.approx(4 / 8)
    # Quarters of 8 frames as the toolkit cuts them: [0:3], ..., [5:8].
    assert s['decay'] == pytest.approx(np.mean([1, 1, 0.8]) -
                                       np.mean([0.2, 0.0, 0.0]))
    one = per_frame_statistics(np.array([0.7]))
    assert one == dict(mean=0.7, recall=1.0, decay=0.0)
    with pytest.raises(ValueError, match='non-empty'):
        per_frame_statistics(np.array([]))


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match='differ in shape'):
        region_similarity(np.zeros((4, 4)), np.zeros((4, 5)))
