import copy

import pytest
import torch
from mmengine.structures import BaseDataElement

from sfc_plugin.registry import MODELS
from sfc_plugin.utils import register_all_modules

register_all_modules()


def tiny_fc(**kwargs):
    cfg = dict(
        type='FineGrainedCorrespondence',
        backbone=dict(type='ResNet', depth=18, strides=(1, 2, 1, 1)),
        projector=dict(
            type='ConvMLP', in_channels=512, hid_channels=32,
            out_channels=16),
        predictor=dict(
            type='ConvMLP', in_channels=16, hid_channels=32, out_channels=16))
    cfg.update(kwargs)
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def batch(n=2, size=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    views = [torch.randn(n, 3, size, size, generator=gen) for _ in range(2)]
    samples = [
        BaseDataElement(
            crop_boxes=torch.tensor([[0.0, 0.0, 0.8, 0.8],
                                     [0.2, 0.1, 1.0, 0.9]]))
        for _ in range(n)
    ]
    return views, samples


def test_target_starts_as_copy_and_gets_no_gradient():
    model = tiny_fc()
    online = {**{f'backbone.{k}': v for k, v in
                 model.backbone.state_dict().items()},
              **{f'projector.{k}': v for k, v in
                 model.projector.state_dict().items()}}
    target = model.target_net.state_dict()
    assert set(online) == set(target)
    for k in online:
        assert torch.equal(online[k], target[k]), k

    views, samples = batch()
    losses = model.loss(views, samples)
    losses['loss'].backward()
    assert all(p.grad is None for p in model.target_net.parameters())
    assert all(not p.requires_grad for p in model.target_net.parameters())
    assert all(p.grad is not None for p in model.predictor.parameters())
    assert model.backbone.conv1.weight.grad.abs().sum() > 0


def test_target_update_is_parameter_ema_applied_before_target_forward():
    model = tiny_fc()
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    before = copy.deepcopy(model.target_net.state_dict())
    online = dict(model.backbone.named_parameters())
    model.target_momentum = 0.9
    views, samples = batch()
    model.loss(views, samples)
    after = model.target_net.state_dict()
    for name, p in online.items():
        key = f'backbone.{name}'
        expected = 0.9 * before[key] + 0.1 * p.detach()
        assert torch.allclose(after[key], expected, atol=1e-6), key
    # BN running statistics are not averaged with the online network's;
    # they follow the target's own train-mode forward.
    rm = 'backbone.bn1.running_mean'
    assert not torch.allclose(after[rm],
                              0.9 * before[rm] + 0.1 *
                              model.backbone.bn1.running_mean)


def test_momentum_one_freezes_target_parameters():
    model = tiny_fc()
    before = [p.clone() for p in model.target_net.parameters()]
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    model.update_target(1.0)
    assert all(torch.equal(a, b)
               for a, b in zip(before, model.target_net.parameters()))


def test_loss_is_symmetric_and_bounded():
    model = tiny_fc()
    views, samples = batch()
    out = model.loss(views, samples)
    assert set(out) == {'loss', 'positive_pairs'}
    assert -4.0 <= out['loss'].item() <= 4.0
    assert out['positive_pairs'].item() > 0

    # Swapping the views (and their boxes) gives the same loss.
    torch.manual_seed(0)
    model_a, model_b = tiny_fc(), None
    model_b = copy.deepcopy(model_a)
    swapped = [
        BaseDataElement(crop_boxes=s.crop_boxes.flip(0)) for s in samples
    ]
    la = model_a.loss(views, samples)['loss']
    lb = model_b.loss(views[::-1], swapped)['loss']
    assert torch.allclose(la, lb, atol=1e-5)


def test_non_overlapping_crops_contribute_zero():
    model = tiny_fc()
    views, _ = batch(n=1)
    far = [BaseDataElement(crop_boxes=torch.tensor([[0.0, 0.0, 0.3, 0.3],
                                                    [0.7, 0.7, 1.0, 1.0]]))]
    out = model.loss(views, far)
    assert out['loss'].item() == 0.0
    assert out['positive_pairs'].item() == 0.0


def test_tensor_mode_gives_stride_8_features():
    model = tiny_fc().eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 80), mode='tensor')
    assert feats.shape == (1, 512, 8, 10)


def test_bad_inputs_are_named():
    model = tiny_fc()
    views, samples = batch()
    with pytest.raises(ValueError, match='two views'):
        model.loss(views[:1], samples)
    with pytest.raises(ValueError, match='crop_boxes'):
        model.loss(views, [BaseDataElement() for _ in samples])
    with pytest.raises(RuntimeError, match='invalid mode'):
        model(views, samples, mode='predict')
    for bad in (0, float('nan'), float('inf'), 'abc'):
        with pytest.raises(ValueError, match='positive_radius'):
            tiny_fc(positive_radius=bad)
    with pytest.raises(ValueError, match='loss_weight must be finite'):
        tiny_fc(loss_weight=float('nan'))


def test_data_preprocessor_normalises_views():
    model = tiny_fc()
    raw = torch.full((2, 2, 3, 8, 8), 255, dtype=torch.uint8)
    raw[:, :, 0] = 0  # blue channel of a BGR image
    out = model.data_preprocessor(
        dict(inputs=raw, data_samples=[None, None]), training=True)
    v1, v2 = out['inputs']
    assert v1.shape == v2.shape == (2, 3, 8, 8)
    # After BGR->RGB the blue (zero) channel is last.
    assert torch.allclose(v1[:, 2], torch.tensor(-103.53 / 57.375))
    assert torch.allclose(v1[:, 0], torch.tensor((255 - 123.675) / 58.395))
    with pytest.raises(ValueError, match=r'\(N, V, 3, H, W\)'):
        model.data_preprocessor(dict(inputs=raw[:, 0]), training=True)


def is_channels_last(model):
    return all(p.is_contiguous(memory_format=torch.channels_last)
               for p in model.parameters() if p.dim() == 4)


def test_channels_last_keeps_every_conv_weight_in_that_format():
    """channels_last=True: every conv weight, online and target, is
    channels-last from construction through an optimiser step and a
    checkpoint load, and the loss is the NCHW model's on the same
    weights."""
    from mmengine.optim import build_optim_wrapper

    torch.manual_seed(0)
    nchw = tiny_fc()
    model = tiny_fc(channels_last=True)
    assert is_channels_last(model) and not is_channels_last(nchw)
    model.load_state_dict(nchw.state_dict())
    assert is_channels_last(model)
    views, samples = batch()
    torch.testing.assert_close(model.loss(views, samples)['loss'],
                               nchw.loss(views, samples)['loss'],
                               rtol=1e-4, atol=1e-5)
    wrapper = build_optim_wrapper(
        model, dict(optimizer=dict(type='Adam', lr=1e-3)))
    raw = torch.randint(0, 256, (2, 2, 3, 64, 64), dtype=torch.uint8)
    losses = model.train_step(
        dict(inputs=raw, data_samples=samples), wrapper)
    assert torch.isfinite(losses['loss'])
    assert is_channels_last(model)


def test_channels_last_must_be_a_bool():
    with pytest.raises(TypeError, match="channels_last must be True or "
                       "False, got 'yes'"):
        tiny_fc(channels_last='yes')
