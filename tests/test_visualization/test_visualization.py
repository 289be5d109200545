import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sfc_plugin.models.encoders import FusedCorrespondenceEncoder
from sfc_plugin.registry import MODELS
from sfc_plugin.utils import register_all_modules
from sfc_plugin.visualization import (
    PALETTE_BGR,
    draw_keypoints,
    draw_mask_overlay,
    encoder_features,
    feature_cell,
    render_heatmap,
    similarity_maps,
    titled_panel,
)

register_all_modules()


def test_mask_overlay_colours_objects_and_outlines_them():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    ids = np.zeros((20, 30), np.uint8)
    ids[5:15, 5:12] = 1
    ids[5:15, 12:25] = 7
    out = draw_mask_overlay(image, ids, alpha=0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    background = ids == 0
    assert np.array_equal(out[background], image[background])
    # Inside: the blend of frame and colour.
    expected = (image[10, 8].astype(float) + PALETTE_BGR[1]) / 2
    assert np.abs(out[10, 8] - expected).max() <= 1
    # Boundaries: the object's own colour (top rows, the 1 | 7 border).
    assert np.array_equal(out[5, 8], PALETTE_BGR[1])
    assert np.array_equal(out[10, 12], PALETTE_BGR[7])
    with pytest.raises(ValueError, match='differ in size'):
        draw_mask_overlay(image, ids[:10])


def test_keypoints_are_drawn_in_their_colours():
    image = np.zeros((40, 40, 3), np.uint8)
    out = draw_keypoints(image, np.array([[10.0, 10.0], [30.0, 25.0],
                                          [np.nan, 3.0]]), radius=3)
    assert np.array_equal(out[10, 10], PALETTE_BGR[1])
    assert np.array_equal(out[25, 30], PALETTE_BGR[2])
    assert not image.any()  # the input is left as it was


def test_feature_cell_maps_pixels_to_their_cell():
    assert feature_cell((0, 0), (480, 854), (60, 107)) == (0, 0)
    assert feature_cell((853, 479), (480, 854), (60, 107)) == (59, 106)
    assert feature_cell((15.9, 8.0), (480, 854), (60, 107)) == (1, 1)
    with pytest.raises(ValueError, match='outside the 854×480'):
        feature_cell((854, 0), (480, 854), (60, 107))


@pytest.fixture(scope='module')
def fused():
    torch.manual_seed(0)
    resnet = dict(type='ResNet', depth=18, num_stages=3, strides=(1, 2, 1),
                  out_indices=(2, ), zero_init_residual=False)
    return MODELS.build(dict(
        type='FusedCorrespondenceEncoder',
        semantic=dict(type='CorrespondenceEncoder', backbone=resnet),
        fine_grained=dict(type='CorrespondenceEncoder', backbone=resnet),
        fc_weight=1.75)).eval()


def test_similarity_maps_are_the_cosines_of_each_feature(fused):
    assert isinstance(fused, FusedCorrespondenceEncoder)
    source, target = torch.randn(2, 3, 48, 72).double()
    fused.double()
    maps = similarity_maps(fused, source, target, (30.0, 20.0))
    assert sorted(maps) == ['fc', 'semantic', 'sfc']
    parts = fused.forward_parts(torch.stack([source, target]))
    assert torch.equal(parts['fused'], fused(torch.stack([source, target])))
    row, col = 20 * 6 // 48, 30 * 9 // 72
    for name, key in [('semantic', 'semantic'), ('fc', 'fine_grained'),
                      ('sfc', 'fused')]:
        feat = parts[key]
        brute = F.cosine_similarity(
            feat[0, :, row, col, None, None], feat[1], dim=0)
        assert maps[name].shape == (6, 9)
        assert torch.allclose(maps[name], brute, atol=1e-10), name
    # eq. 7: the fused affinity is (cos_s + λ² cos_f) / (1 + λ²).
    lam2 = 1.75**2
    assert torch.allclose(maps['sfc'],
                          (maps['semantic'] + lam2 * maps['fc']) / (1 + lam2),
                          atol=1e-10)
    fused.float()


def test_single_encoder_gives_one_map():
    encoder = MODELS.build(dict(
        type='CorrespondenceEncoder',
        backbone=dict(type='ResNet', depth=18, num_stages=3,
                      strides=(1, 2, 1), out_indices=(2, ))))
    feats = encoder_features(encoder, torch.randn(1, 3, 32, 40))
    assert list(feats) == ['features'] and feats['features'].shape[-2:] == (
        4, 5)


def test_heatmap_is_red_where_similarity_peaks():
    sim = torch.zeros(4, 6)
    sim[1, 4] = 1.0
    out = render_heatmap(sim, np.zeros((32, 48, 3), np.uint8), alpha=1.0)
    assert out.shape == (32, 48, 3)
    b, g, r = out[12, 36].astype(int)  # centre of cell (1, 4)
    assert r > 100 and b < 50
    b, g, r = out[28, 4].astype(int)
    assert b > 100 and r < 50
    flat = render_heatmap(torch.zeros(4, 6), np.zeros((8, 12, 3), np.uint8))
    assert flat.shape == (8, 12, 3)


def test_panel_puts_images_side_by_side_at_one_height():
    panel = titled_panel(dict(a=np.zeros((20, 30, 3), np.uint8),
                              b=np.zeros((40, 40, 3), np.uint8)))
    assert panel.shape == (20 + 28, 30 + 20, 3)
