from copy import copy as shallow_copy

import pytest
import torch
from torch import nn

from sfc_plugin.models import (
    CorrespondenceEncoder,
    FusedCorrespondenceEncoder,
    ReducedPrecisionEncoder,
    fold_batch_norms,
)
from sfc_plugin.models.encoders.inference_copy import IndexFreeMaxPool2d
from sfc_plugin.utils import register_all_modules

from .test_encoders import R18_L3

register_all_modules()

R50_L2 = dict(type='ResNet', depth=50, num_stages=2, strides=(1, 2),
              out_indices=(1, ))


def with_running_statistics(encoder):
    """Random weights and BatchNorm statistics (positive variances): a
    fold that dropped or misapplied any of them would show."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, t in encoder.state_dict().items():
            if not t.is_floating_point():
                continue
            t.copy_(torch.randn_like(t) * 0.3)
            if name.endswith('running_var'):
                t.abs_().add_(0.5)
    return encoder.eval()


def batch_norms(module):
    return [m for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize('kind', ['fc', 'fused'])
def test_folded_copy_computes_the_same_features(kind):
    if kind == 'fc':
        encoder = CorrespondenceEncoder(backbone=R18_L3)
    else:
        encoder = FusedCorrespondenceEncoder(
            semantic=dict(type='CorrespondenceEncoder', backbone=R50_L2),
            fine_grained=dict(
                type='CorrespondenceEncoder',
                backbone=dict(R18_L3, num_stages=2, strides=(1, 2),
                              out_indices=(1, ))))
    encoder = with_running_statistics(encoder).double()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    images = torch.randn(2, 3, 37, 53, dtype=torch.float64)

    folded = fold_batch_norms(encoder)

    assert batch_norms(encoder) and not batch_norms(folded)
    assert not any(p.requires_grad for p in folded.parameters())
    with torch.no_grad():
        torch.testing.assert_close(folded(images), encoder(images),
                                   rtol=1e-9, atol=1e-11)
    for k, v in encoder.state_dict().items():  # the original untouched
        assert torch.equal(v, before[k]), k


def test_folding_needs_eval_mode():
    encoder = CorrespondenceEncoder(backbone=R18_L3).train()
    with pytest.raises(ValueError, match='training mode'):
        fold_batch_norms(encoder)


class _Untraceable(nn.Module):
    """A backbone whose control flow depends on its input's values."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        if x.sum() > 0:
            x = -x
        return (self.bn(self.conv(x)), )


def test_backbones_torch_fx_cannot_trace_are_copied_unfolded(monkeypatch):
    from sfc_plugin.models.encoders import inference_copy
    logged = []
    monkeypatch.setattr(inference_copy, 'print_log',
                        lambda msg, **kwargs: logged.append(msg))
    encoder = CorrespondenceEncoder(backbone=R18_L3)
    encoder.backbone = _Untraceable()
    encoder = with_running_statistics(encoder)

    folded = fold_batch_norms(encoder)

    assert len(logged) == 1 and '_Untraceable could not be traced' in (
        logged[0]) and 'stay unfolded' in logged[0]
    assert isinstance(folded.backbone, _Untraceable)
    assert folded.backbone is not encoder.backbone
    images = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(folded(images), encoder(images))


def test_reduced_precision_copy_follows_the_weights():
    encoder = with_running_statistics(CorrespondenceEncoder(
        backbone=dict(R18_L3, num_stages=2, strides=(1, 2),
                      out_indices=(1, ))))
    cache = ReducedPrecisionEncoder()
    images = torch.randn(1, 3, 24, 40).to(torch.bfloat16)

    copy = cache(encoder, torch.bfloat16)
    assert cache(encoder, torch.bfloat16) is copy  # kept while unchanged
    assert all(p.dtype == torch.bfloat16 for p in copy.parameters())
    conv = copy.backbone.conv1.conv.weight  # fused with its ReLU
    assert conv.is_contiguous(memory_format=torch.channels_last)

    def expected():  # float32 and unfolded: bf16 rounding apart
        with torch.no_grad():
            return encoder(images.float()).to(torch.bfloat16)

    def assert_close(a, b):  # unit-norm features, 8 bits of mantissa
        torch.testing.assert_close(a, b, rtol=0, atol=0.03)

    with torch.no_grad():
        old = expected()
        assert_close(copy(images), old)
        # In-place writes: load_state_dict, an optimiser's, BN statistics.
        state = encoder.state_dict()
        state['backbone.conv1.weight'] = -state['backbone.conv1.weight']
        encoder.load_state_dict(state)
        renewed = cache(encoder, torch.bfloat16)
        assert renewed is not copy
        assert (expected().float() - old.float()).abs().max() > 0.2
        assert_close(renewed(images), expected())
        encoder.backbone.layer2[0].bn1.running_mean.add_(1)
        assert cache(encoder, torch.bfloat16) is not renewed
        assert_close(cache(encoder, torch.bfloat16)(images), expected())
        # A replaced parameter, and a replaced submodule.
        kept = cache(encoder, torch.bfloat16)
        conv = encoder.backbone.layer1[0].conv2
        conv.weight = nn.Parameter(torch.randn_like(conv.weight))
        assert cache(encoder, torch.bfloat16) is not kept
        assert_close(cache(encoder, torch.bfloat16)(images), expected())
        kept = cache(encoder, torch.bfloat16)
        old = encoder.backbone.layer2[0].conv1
        encoder.backbone.layer2[0].conv1 = nn.Conv2d(
            old.in_channels, old.out_channels, old.kernel_size, old.stride,
            old.padding, bias=False).eval()
        assert cache(encoder, torch.bfloat16) is not kept
        assert_close(cache(encoder, torch.bfloat16)(images), expected())
        # A buffer replaced; a weight's data replaced (same object, other
        # storage); a bias removed; kept while nothing changes.
        bn = encoder.backbone.layer1[1].bn2
        for change in (
                lambda: setattr(bn, 'running_var',
                                bn.running_var.clone().mul_(4)),
                lambda: setattr(encoder.backbone.conv1.weight, 'data',
                                -encoder.backbone.conv1.weight.data.clone()),
                lambda: setattr(bn, 'bias', None)):
            kept = cache(encoder, torch.bfloat16)
            assert cache(encoder, torch.bfloat16) is kept
            change()
            renewed = cache(encoder, torch.bfloat16)
            assert renewed is not kept
            assert_close(renewed(images), expected())
        # Another encoder object with the same weights.
        twin = shallow_copy(encoder)  # its dicts are the encoder's
        assert cache(twin, torch.bfloat16) is not renewed
    # Another type; and a dropped copy is made again.
    assert cache(encoder, torch.float16) is not cache(encoder, torch.bfloat16)
    kept = cache(encoder, torch.bfloat16)
    cache.invalidate()
    assert cache(encoder, torch.bfloat16) is not kept


@pytest.mark.parametrize('layout', ['channels_last', 'nchw'])
@pytest.mark.parametrize('dtype',
                         [torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize('shape', [(2, 5, 7, 9), (1, 3, 8, 6), (1, 2, 1, 1),
                                   (1, 2, 1, 4), (1, 2, 3, 1),
                                   (1, 64, 48, 85)])
def test_index_free_max_pool_equals_max_pool2d(shape, dtype, layout):
    """Exactly, NaN and -inf included: borders (odd and even sizes, one
    row or column), both layouts."""
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g).to(dtype)
    x[0, 0, 0, 0] = float('nan')
    x[-1, -1, -1, -1] = float('-inf')
    if layout == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    expected = torch.nn.functional.max_pool2d(x, 3, 2, 1)
    got = IndexFreeMaxPool2d()(x)
    assert got.shape == expected.shape and got.dtype == dtype
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(got.nan_to_num(nan=7.0), expected.nan_to_num(nan=7.0))
    if layout == 'channels_last':
        assert got.is_contiguous(memory_format=torch.channels_last)
    unbatched = x[0]
    assert torch.equal(IndexFreeMaxPool2d()(unbatched).nan_to_num(nan=7.0),
                       expected[0].nan_to_num(nan=7.0))


def test_reduced_precision_copy_pools_without_indices():
    """The stem's 3×3 / stride-2 pool is replaced; other pools are not."""
    from sfc_plugin.models.encoders.inference_copy import (
        _without_pool_indices,
    )
    encoder = CorrespondenceEncoder(backbone=R18_L3).eval()
    copy = ReducedPrecisionEncoder()(encoder, torch.bfloat16)
    assert isinstance(copy.backbone.maxpool, IndexFreeMaxPool2d)
    assert type(encoder.backbone.maxpool) is nn.MaxPool2d
    others = [nn.MaxPool2d(2), nn.MaxPool2d(3, 2, 1, ceil_mode=True),
              nn.MaxPool2d(3, 1, 1), nn.MaxPool2d(3, 2, 1, dilation=2),
              nn.MaxPool2d(3, 2, 1, return_indices=True)]
    stem = nn.MaxPool2d((3, 3), (2, 2), (1, 1))
    replaced = _without_pool_indices(nn.Sequential(stem, *others))
    assert isinstance(replaced[0], IndexFreeMaxPool2d)
    assert [m for m in replaced][1:] == others


def test_index_free_pool_is_for_the_cpu_only(monkeypatch):
    """Only the CPU's max_pool2d writes the index tensor the pool avoids;
    on another device the copy keeps nn.MaxPool2d."""
    from sfc_plugin.models.encoders import inference_copy
    encoder = CorrespondenceEncoder(backbone=R18_L3).eval()
    replaced = []
    monkeypatch.setattr(inference_copy, '_without_pool_indices',
                        lambda module: replaced.append(module) or module)
    ReducedPrecisionEncoder()(encoder, torch.bfloat16)
    assert len(replaced) == 1
    encoder.to('meta')  # a device other than the CPU, without a GPU
    copy = ReducedPrecisionEncoder()(encoder, torch.bfloat16)
    assert len(replaced) == 1
    assert type(copy.backbone.maxpool) is nn.MaxPool2d
