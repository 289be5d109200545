"""FusedConvReLU2d against the separate ops, the graph rewrite that puts it
in the encoders' inference copies, and its cuDNN path with fakes of
``torch.cudnn_convolution_relu`` / ``cudnn_convolution_add_relu`` (no GPU
here)."""
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.experimental.optimization import fuse

from sfc_plugin.models import CorrespondenceEncoder, ReducedPrecisionEncoder
from sfc_plugin.models.encoders import conv_relu_fusion
from sfc_plugin.models.encoders.conv_relu_fusion import (
    FusedConvReLU2d,
    fuse_conv_relu,
)
from sfc_plugin.utils import register_all_modules

from .test_encoders import R18_L3
from .test_inference_copy import R50_L2, with_running_statistics

register_all_modules()

#: (in, out, kernel, stride, padding, dilation, groups): the stem, 1×1
#: downsampling, 3×3 of a block, and what a ResNet does not have.
GEOMETRIES = [(3, 16, 7, 2, 3, 1, 1), (8, 16, 1, 2, 0, 1, 1),
              (16, 16, 3, 1, 1, 1, 1), (8, 12, 3, 2, 2, 2, 4),
              (6, 4, (3, 1), (1, 2), (1, 0), 1, 2)]


def conv_of(geometry, bias=True, seed=0):
    c_in, c_out, k, stride, padding, dilation, groups = geometry
    torch.manual_seed(seed)
    return nn.Conv2d(c_in, c_out, k, stride, padding, dilation, groups,
                     bias=bias).eval().requires_grad_(False)


def float64_reference(conv, x, residual):
    out = F.conv2d(x.double(), conv.weight.double(),
                   None if conv.bias is None else conv.bias.double(),
                   conv.stride, conv.padding, conv.dilation, conv.groups)
    if residual is not None:
        out = out + residual.double()
    return out.relu()


class TestFusedConvReLU2d:
    """The fused call against float64 and against the separate ops, on
    random inputs: odd sizes, both layouts, with and without a residual and
    a bias."""

    @pytest.mark.parametrize('geometry', GEOMETRIES)
    @pytest.mark.parametrize('dtype',
                             [torch.float32, torch.bfloat16, torch.float64])
    @pytest.mark.parametrize('residual', [False, True])
    @pytest.mark.parametrize('layout', ['channels_last', 'nchw'])
    @pytest.mark.parametrize('bias', [True, False])
    def test_equals_the_separate_ops(self, geometry, dtype, residual, layout,
                                     bias):
        conv = conv_of(geometry, bias).to(dtype)
        fused = FusedConvReLU2d(conv)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2, geometry[0], 13, 10, generator=g).to(dtype)
        if layout == 'channels_last':
            x = x.contiguous(memory_format=torch.channels_last)
            conv.to(memory_format=torch.channels_last)
        r = (torch.randn(fused.output_shape(x), generator=g).to(dtype)
             if residual else None)
        with torch.no_grad():
            got = fused(x, r)
            separate = fused.reference(x, r)
        expected = float64_reference(conv, x, r)
        assert got.shape == expected.shape and got.dtype == dtype
        assert (got >= 0).all()
        if dtype == torch.float64:  # no library fuses it: the separate ops
            assert torch.equal(got, separate)
            return
        # One rounding from the float32 accumulator where the separate ops
        # round two or three times: no further from float64 than they are,
        # within the last place of their type.
        ulp = torch.finfo(dtype).eps * expected.abs().clamp_min(1.0)
        assert ((got.double() - expected).abs()
                <= (separate.double() - expected).abs() + ulp).all()
        if layout == 'channels_last':
            assert got.is_contiguous(memory_format=torch.channels_last)

    def test_the_cpu_takes_onednn_where_it_can(self):
        conv = conv_of(GEOMETRIES[2])
        fused = FusedConvReLU2d(conv)
        x = torch.randn(1, 16, 9, 9)
        with torch.no_grad():
            for dtype, takes in ((torch.float32, True), (torch.float64, False),
                                 (torch.float16, False)):
                fused.to(dtype)
                out = conv_relu_fusion._onednn_call(fused, x.to(dtype), None)
                assert (out is not None) == takes, dtype
            fused.float()
            previous = torch.backends.mkldnn.set_flags(False)
            try:
                assert conv_relu_fusion._onednn_call(fused, x, None) is None
            finally:
                torch.backends.mkldnn.set_flags(*previous)

    def test_what_the_libraries_do_not_take_runs_the_separate_ops(self,
                                                                   monkeypatch):
        """A residual that broadcasts or is of another type, another device
        type, or autograd: the separate ops, as torch would compute them."""
        called = []
        monkeypatch.setitem(conv_relu_fusion._FUSED_CALLS, 'cpu',
                            lambda *args: called.append(args))
        conv = conv_of(GEOMETRIES[2])
        fused = FusedConvReLU2d(conv)
        x = torch.randn(1, 16, 9, 9)
        with torch.no_grad():
            for residual in (torch.randn(1, 16, 1, 1), torch.randn(16, 9, 9),
                             torch.randn(1, 16, 9, 9, dtype=torch.float64)):
                torch.testing.assert_close(fused(x, residual),
                                           F.relu(conv(x) + residual))
            assert not called
            fused(x, torch.randn(1, 16, 9, 9))
            assert len(called) == 1
        x.requires_grad_(True)
        out = fused(x)
        assert out.grad_fn is not None and len(called) == 1
        out.sum().backward()
        assert x.grad is not None

    @pytest.mark.parametrize('conv', [
        nn.Conv2d(3, 4, 3, padding='same'),
        nn.Conv2d(3, 4, 3, padding=1, padding_mode='reflect'),
        nn.Conv1d(3, 4, 3),
        type('MyConv', (nn.Conv2d, ), {})(3, 4, 3)
    ], ids=['same', 'reflect', 'conv1d', 'subclass'])
    def test_refuses_a_convolution_it_cannot_run(self, conv):
        with pytest.raises(ValueError, match='FusedConvReLU2d: needs'):
            FusedConvReLU2d(conv)


def fake_cudnn(monkeypatch, fail=None):
    """Fakes of cuDNN's fused convolutions that compute what PyTorch
    documents for them (``relu(conv(x, w) + alpha * z + bias)``), recording
    their calls; ``fail``: the error they raise instead."""
    calls = []

    def relu(x, weight, bias, stride, padding, dilation, groups):
        calls.append('relu')
        if fail:
            raise RuntimeError(fail)
        return F.conv2d(x, weight, bias, stride, padding, dilation,
                        groups).relu()

    def add_relu(x, weight, z, alpha, bias, stride, padding, dilation,
                 groups):
        calls.append('add_relu')
        if fail:
            raise RuntimeError(fail)
        return (F.conv2d(x, weight, bias, stride, padding, dilation, groups)
                + alpha * z).relu()

    monkeypatch.setattr(torch, 'cudnn_convolution_relu', relu)
    monkeypatch.setattr(torch, 'cudnn_convolution_add_relu', add_relu)
    monkeypatch.setattr(torch.backends.cudnn, 'is_available', lambda: True)
    monkeypatch.setenv('SFC_PLUGIN_CUDNN_FUSION', '1')
    return calls


class TestCuDNNPath:
    """``_cudnn_call`` on CPU tensors with the fakes: the arguments it
    passes (cuDNN's order: stride before padding) and what it does when
    cuDNN has no fused engine."""

    @pytest.mark.parametrize('geometry', GEOMETRIES)
    @pytest.mark.parametrize('residual', [False, True])
    def test_passes_the_convolution_as_cudnn_takes_it(self, monkeypatch,
                                                      geometry, residual):
        calls = fake_cudnn(monkeypatch)
        fused = FusedConvReLU2d(conv_of(geometry))
        x = torch.randn(2, geometry[0], 11, 14)
        r = torch.randn(fused.output_shape(x)) if residual else None
        with torch.no_grad():
            got = conv_relu_fusion._cudnn_call(fused, x, r)
        assert calls == ['add_relu' if residual else 'relu']
        torch.testing.assert_close(got.double(),
                                   float64_reference(fused.conv, x, r),
                                   rtol=1e-5, atol=1e-5)

    def test_no_fused_engine_falls_back_once_and_warns_once(self,
                                                            monkeypatch):
        error = 'GET was unable to find an engine to execute this computation'
        calls = fake_cudnn(monkeypatch, fail=error)
        logged = []
        monkeypatch.setattr(conv_relu_fusion, 'print_log',
                            lambda msg, **kwargs: logged.append(msg))
        monkeypatch.setattr(conv_relu_fusion, '_LOGGED_CUDNN_ERRORS', set())
        first, second = (FusedConvReLU2d(conv_of(GEOMETRIES[2], seed=s))
                         for s in (0, 1))
        x = torch.randn(1, 16, 9, 9)
        with torch.no_grad():
            for module in (first, second, first, second):
                assert conv_relu_fusion._cudnn_call(module, x, None) is None
        assert calls == ['relu', 'relu']  # each convolution tried once
        assert first.cudnn_error == second.cudnn_error == error
        assert len(logged) == 1 and error in logged[0]
        assert 'separate ops' in logged[0]
        assert 'cuDNN: separate ops' in repr(first)

    @pytest.mark.parametrize('asked', [None, '0', ''])
    def test_not_asked_until_timed(self, monkeypatch, asked):
        """cuDNN's fused calls only with SFC_PLUGIN_CUDNN_FUSION=1: unset,
        empty or 0, CUDA keeps the separate ops."""
        calls = fake_cudnn(monkeypatch)
        if asked is None:
            monkeypatch.delenv('SFC_PLUGIN_CUDNN_FUSION')
        else:
            monkeypatch.setenv('SFC_PLUGIN_CUDNN_FUSION', asked)
        fused = FusedConvReLU2d(conv_of(GEOMETRIES[2]))
        with torch.no_grad():
            assert conv_relu_fusion._cudnn_call(
                fused, torch.randn(1, 16, 9, 9), None) is None
        assert not calls and fused.cudnn_error is None

    @pytest.mark.parametrize('value', ['2', 'yes', ' 1'])
    def test_a_bad_setting_is_refused(self, monkeypatch, value):
        fake_cudnn(monkeypatch)
        monkeypatch.setenv('SFC_PLUGIN_CUDNN_FUSION', value)
        fused = FusedConvReLU2d(conv_of(GEOMETRIES[2]))
        with pytest.raises(ValueError, match='SFC_PLUGIN_CUDNN_FUSION must '
                           f'be 0 or 1, got {value!r}'):
            conv_relu_fusion._cudnn_call(fused, torch.randn(1, 16, 9, 9),
                                         None)

    def test_cudnn_switched_off_or_float64_is_not_asked(self, monkeypatch):
        calls = fake_cudnn(monkeypatch)
        fused = FusedConvReLU2d(conv_of(GEOMETRIES[2]))
        x = torch.randn(1, 16, 9, 9)
        with torch.no_grad(), torch.backends.cudnn.flags(enabled=False):
            assert conv_relu_fusion._cudnn_call(fused, x, None) is None
        with torch.no_grad():
            assert conv_relu_fusion._cudnn_call(fused.double(), x.double(),
                                                None) is None
        assert not calls


class Block(nn.Module):
    """A torchvision-style residual block: the downsampling comes after
    the block's last convolution in the traced graph."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, 2, 1)
        self.conv2 = nn.Conv2d(8, 8, 3, 1, 1)
        self.downsample = nn.Conv2d(4, 8, 1, 2)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.conv1(x))
        out = self.conv2(out)
        identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Others(nn.Module):
    """What the rewrite must leave as it is."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Conv2d(4, 4, 3, padding=1)
        self.used_twice = nn.Conv2d(4, 4, 3, padding=1)
        self.scaled = nn.Conv2d(4, 4, 3, padding=1)
        self.reflect = nn.Conv2d(4, 4, 3, padding=1, padding_mode='reflect')
        self.plain = nn.Conv2d(4, 4, 1)
        self.read = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        a = torch.relu(self.shared(x)) + self.shared(x)  # shared weights
        b = self.used_twice(a)
        b = F.relu(b) + b  # the convolution feeds another op
        c = torch.add(self.scaled(b), a, alpha=2).relu()  # not a plain sum
        d = F.relu(self.reflect(c))
        e = F.relu(self.plain(d) + 1.0)  # a number, not a tensor
        f = F.relu(self.read(e)) * self.read.weight.sum()  # weights read
        return f, F.relu(d - c)


@pytest.mark.parametrize('kind', ['r18', 'r50', 'torchvision-block'])
def test_rewrite_fuses_each_resnet_convolution_with_its_relu(kind):
    if kind == 'torchvision-block':
        model, expected = Block(), 2
    else:
        backbone = R18_L3 if kind == 'r18' else R50_L2
        encoder = with_running_statistics(
            CorrespondenceEncoder(backbone=backbone))
        model = encoder.backbone
        # R18 to layer3: stem + 2 of 2 per block, 6 blocks; R50 to layer2:
        # stem + 3 of 3 per block, 7 blocks.
        expected = 13 if kind == 'r18' else 22
    # The backbones' BatchNorms folded first, as the inference copies do.
    graph_module = fuse(model.double().eval())
    x = torch.randn(2, 3 if kind != 'torchvision-block' else 4, 29, 34,
                    dtype=torch.float64)
    with torch.no_grad():
        before = graph_module(x)
        assert fuse_conv_relu(graph_module) == expected
        after = graph_module(x)
    fused = [m for m in graph_module.modules()
             if isinstance(m, FusedConvReLU2d)]
    assert len(fused) == expected
    relus = [n for n in graph_module.graph.nodes
             if n.op == 'call_module' and isinstance(
                 graph_module.get_submodule(n.target), nn.ReLU)]
    sums = [n for n in graph_module.graph.nodes
            if n.target in (operator.add, operator.iadd)]
    assert not relus and not sums
    # float64: the separate ops, so the same values bit for bit.
    flat = (before, after) if isinstance(before, torch.Tensor) else (
        torch.cat([t.flatten() for t in before]),
        torch.cat([t.flatten() for t in after]))
    assert torch.equal(*flat)


def test_rewrite_leaves_what_it_cannot_fuse():
    model = Others().double().eval()
    graph_module = fx.symbolic_trace(model)
    x = torch.randn(1, 4, 7, 9, dtype=torch.float64)
    with torch.no_grad():
        before = graph_module(x)
        assert fuse_conv_relu(graph_module) == 0
        after = graph_module(x)
    assert not any(isinstance(m, FusedConvReLU2d)
                   for m in graph_module.modules())
    for a, b in zip(before, after):
        assert torch.equal(a, b)


def test_reduced_precision_copy_fuses_unless_asked_not_to():
    encoder = with_running_statistics(CorrespondenceEncoder(backbone=R18_L3))
    images = torch.randn(1, 3, 40, 56).to(torch.bfloat16)
    fused = ReducedPrecisionEncoder()(encoder, torch.bfloat16)
    separate = ReducedPrecisionEncoder(fuse_relus=False)(encoder,
                                                         torch.bfloat16)
    count = sum(isinstance(m, FusedConvReLU2d) for m in fused.modules())
    assert count == 13
    assert not any(isinstance(m, FusedConvReLU2d)
                   for m in separate.modules())
    with torch.no_grad():
        expected = encoder(images.float())
        # Unit-norm features: bf16's 8 bits of mantissa, either way.
        for copy in (fused, separate):
            torch.testing.assert_close(copy(images).float(), expected,
                                       rtol=0, atol=0.03)


def test_copies_are_fused_only_where_a_library_call_is_taken(monkeypatch):
    """On the CPU; on CUDA with SFC_PLUGIN_CUDNN_FUSION=1 (read when the
    copy is made); elsewhere the rewrite would only add a call a layer."""
    assert conv_relu_fusion.fusion_taken('cpu')
    assert not conv_relu_fusion.fusion_taken('meta')
    monkeypatch.delenv('SFC_PLUGIN_CUDNN_FUSION', raising=False)
    assert not conv_relu_fusion.fusion_taken('cuda')
    monkeypatch.setenv('SFC_PLUGIN_CUDNN_FUSION', '1')
    assert conv_relu_fusion.fusion_taken('cuda')
    assert not conv_relu_fusion.fusion_taken('meta')
    encoder = CorrespondenceEncoder(backbone=R18_L3).eval().to('meta')
    copy = ReducedPrecisionEncoder()(encoder, torch.bfloat16)
    assert not any(isinstance(m, FusedConvReLU2d) for m in copy.modules())


@pytest.mark.parametrize('weight', ['nan', 'fp16-overflow'])
def test_reduced_precision_copy_refuses_non_finite_weights(weight):
    encoder = with_running_statistics(CorrespondenceEncoder(backbone=R18_L3))
    bn = encoder.backbone.layer2[0].bn1
    with torch.no_grad():
        if weight == 'nan':
            encoder.backbone.layer1[1].conv2.weight[0, 0, 0, 0] = float('nan')
        else:  # folded: weight · γ / √var, beyond 65504 in fp16
            bn.running_var.fill_(1e-12)
            bn.weight.fill_(1e3)
    dtype = torch.float16 if weight == 'fp16-overflow' else torch.bfloat16
    with pytest.raises(ValueError, match='not finite') as err:
        ReducedPrecisionEncoder()(encoder, dtype)
    assert ('layer1.1.conv2' if weight == 'nan' else 'layer2.0.conv1') in str(
        err.value)
    if weight == 'fp16-overflow':  # bf16 has float32's range
        ReducedPrecisionEncoder()(encoder, torch.bfloat16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
class TestOnCUDA:
    """cuDNN's fused convolutions themselves (``benchmarks/gpu_check.py``
    runs these): against float64 as the CPU's are, and fused indeed where
    cuDNN's runtime fusion covers the case (bf16 / fp16, channels-last,
    channels a multiple of 8, no groups)."""

    @pytest.fixture(autouse=True)
    def cudnn_fusion(self, monkeypatch):
        monkeypatch.setenv('SFC_PLUGIN_CUDNN_FUSION', '1')

    @pytest.mark.parametrize('geometry', GEOMETRIES)
    @pytest.mark.parametrize(
        'dtype', [torch.bfloat16, torch.float16, torch.float32])
    @pytest.mark.parametrize('residual', [False, True])
    def test_cuda_fused_call_equals_the_separate_ops(self, geometry, dtype,
                                                     residual):
        conv = conv_of(geometry).to('cuda', dtype).to(
            memory_format=torch.channels_last)
        fused = FusedConvReLU2d(conv)
        g = torch.Generator().manual_seed(2)
        x = torch.randn(2, geometry[0], 37, 50, generator=g).to(
            'cuda', dtype).contiguous(memory_format=torch.channels_last)
        r = (torch.randn(fused.output_shape(x), generator=g).to('cuda', dtype)
             if residual else None)
        # float32 without TF32, whose rounding would dwarf the comparison.
        with torch.no_grad(), torch.backends.cudnn.flags(
                enabled=True, allow_tf32=False):
            got = fused(x, r)
            separate = fused.reference(x, r)
        expected = float64_reference(conv, x, r)
        assert got.shape == expected.shape and got.dtype == dtype
        if dtype == torch.float32:  # the sums' order decides, not rounding
            torch.testing.assert_close(got, separate, rtol=1e-5, atol=1e-5)
        else:
            ulp = torch.finfo(dtype).eps * expected.abs().clamp_min(1.0)
            assert ((got.double() - expected).abs()
                    <= (separate.double() - expected).abs() + 2 * ulp).all()
        if (dtype != torch.float32 and geometry[0] % 8 == 0
                and geometry[6] == 1):
            assert fused.cudnn_error is None, fused.cudnn_error

    def test_cuda_tracker_copy_fuses_the_encoder(self):
        encoder = with_running_statistics(
            CorrespondenceEncoder(backbone=R18_L3)).cuda()
        copy = ReducedPrecisionEncoder()(encoder, torch.bfloat16)
        images = torch.randn(1, 3, 96, 160, device='cuda')
        with torch.no_grad():
            got = copy(images.to(torch.bfloat16).contiguous(
                memory_format=torch.channels_last))
            expected = encoder(images)
        torch.testing.assert_close(got.float(), expected, rtol=0, atol=0.03)
        fused = [m for m in copy.modules() if isinstance(m, FusedConvReLU2d)]
        # The stem's 3 input channels may be beyond cuDNN's fusion.
        assert len(fused) == 13
        assert sum(m.cudnn_error is not None for m in fused[1:]) == 0, [
            m.cudnn_error for m in fused]
