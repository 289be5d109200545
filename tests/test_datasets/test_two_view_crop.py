
import numpy as np
import pytest
import torch

from sfc_plugin.datasets.transforms import (
    PackMultiViewInputs,
    TwoViewRandomResizedCrop,
    crop_box,
    sample_crop,
)


def coordinate_image(h, w):
    """Channel 0 holds x/(W-1) and channel 1 y/(H-1) of each pixel."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([x / (w - 1), y / (h - 1), np.zeros_like(x)], axis=-1)


@pytest.mark.parametrize('flip_prob', [0.0, 1.0])
@pytest.mark.parametrize('seed', range(6))
def test_crop_of_coordinate_image_reproduces_box(seed, flip_prob):
    np.random.seed(seed)
    h, w = 97, 143
    t = TwoViewRandomResizedCrop(size=16, scale=(0.05, 1.0),
                                 flip_prob=flip_prob)
    out = t(dict(img=coordinate_image(h, w)))
    assert out['img'].shape == (2, 16, 16, 3)
    assert out['crop_boxes'].shape == (2, 4)
    for view, box, flipped in zip(out['img'], out['crop_boxes'],
                                  out['flip']):
        assert bool(flipped) == (flip_prob == 1.0)
        x1, y1, x2, y2 = map(float, box)
        if flipped:
            assert x1 > x2
        # The corners of the view sample the image next to the box corners:
        # resizing moves them by at most one source pixel per output pixel.
        tol_x = (abs(x2 - x1) * (w - 1) / 16 + 1) / (w - 1)
        tol_y = ((y2 - y1) * (h - 1) / 16 + 1) / (h - 1)
        assert view[0, 0, 0] == pytest.approx(x1, abs=tol_x)
        assert view[0, -1, 0] == pytest.approx(x2, abs=tol_x)
        assert view[0, 0, 1] == pytest.approx(y1, abs=tol_y)
        assert view[-1, 0, 1] == pytest.approx(y2, abs=tol_y)
        # The box's centre is the centre of the view.
        assert view[:, :, 0].mean() == pytest.approx((x1 + x2) / 2,
                                                     abs=tol_x)
        assert view[:, :, 1].mean() == pytest.approx((y1 + y2) / 2,
                                                     abs=tol_y)


def test_crop_box_of_full_image_is_unit_box():
    assert crop_box(0, 0, 10, 20, 10, 20).tolist() == [0, 0, 1, 1]


def test_sample_crop_respects_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = sample_crop(100, 200, (0.3, 0.6), (0.75, 4 / 3),
                                      rng=rng)
        assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 200
        area = h * w / 20000
        assert 0.28 < area < 0.62
        assert 0.7 < w / h < 1.4


def test_sample_crop_falls_back_to_centre():
    # A 1000:1 strip never fits a 3/4..4/3 draw of half its area.
    top, left, h, w = sample_crop(2, 2000, (0.5, 0.5), (0.75, 4 / 3))
    assert (h, w) == (2, 3) and top == 0 and left == (2000 - 3) // 2


def test_scale_from_zero_never_breaks():
    np.random.seed(0)
    t = TwoViewRandomResizedCrop(size=8)
    for _ in range(50):
        out = t(dict(img=np.zeros((30, 40, 3), np.uint8)))
        assert out['img'].shape == (2, 8, 8, 3)
        assert np.all(out['crop_boxes'] >= 0) and np.all(
            out['crop_boxes'] <= 1)


def test_pack_multi_view_inputs():
    out = PackMultiViewInputs()(dict(
        img=np.zeros((2, 8, 6, 3), np.uint8),
        crop_boxes=np.zeros((2, 4)), img_path='x.jpg', flip=np.array(
            [False, True])))
    assert out['inputs'].shape == (2, 3, 8, 6)
    assert out['inputs'].dtype == torch.uint8
    assert out['data_samples'].crop_boxes.dtype == torch.float32
    assert out['data_samples'].img_path == 'x.jpg'
    with pytest.raises(ValueError, match='V, H, W, C'):
        PackMultiViewInputs()(dict(img=np.zeros((8, 6, 3)), crop_boxes=0))


@pytest.mark.parametrize('kwargs,match', [
    (dict(size=0), 'size'),
    (dict(scale=(0.5, 0.2)), 'scale'),
    (dict(ratio=(0, 1)), 'ratio'),
    (dict(flip_prob=2), 'flip_prob'),
    (dict(interpolation='lanczos9'), 'interpolation'),
    # 100000 once reached OpenCV, which failed to allocate 30 GB.
    (dict(size=100000), r'size must be in \[1, 4096\], got 100000'),
    (dict(size=(64, 2.5)), 'size must be an integer'),
    (dict(size=12.5), r'size must be an int or \(h, w\), got 12\.5'),
    (dict(size=(1, 2, 3)), r'size must be an int or \(h, w\)'),
    (dict(max_attempts=-1), r'max_attempts must be in \[0, 1000\]'),
    (dict(max_attempts=2.5), 'max_attempts must be an integer'),
    # A string reached the comparison (TypeError); inf overflowed math.exp.
    (dict(scale='abc'), r'scale must be two numbers \(low, high\)'),
    (dict(scale=(0.1, 'x')), r'scale\[1\] must be a real number'),
    (dict(ratio=(1, float('inf'))), 'ratio'),
    (dict(ratio=(float('nan'), 1)), 'ratio'),
    (dict(flip_prob='x'), 'flip_prob must be a real number'),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TwoViewRandomResizedCrop(**kwargs)


def test_too_small_image_is_named():
    with pytest.raises(ValueError, match='tiny.png'):
        TwoViewRandomResizedCrop()(dict(img=np.zeros((1, 5, 3), np.uint8),
                                        img_path='tiny.png'))
