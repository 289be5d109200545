import pytest
import torch

from sfc_plugin.models import ResNet


@pytest.mark.parametrize('depth,expansion', [(18, 1), (34, 1), (50, 4),
                                             (101, 4)])
def test_classification_strides_and_channels(depth, expansion):
    net = ResNet(depth=depth, out_indices=(0, 1, 2, 3)).eval()
    with torch.no_grad():
        outs = net(torch.randn(1, 3, 64, 96))
    assert [o.shape[1] for o in outs] == [
        64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion
    ]
    assert [tuple(o.shape[-2:]) for o in outs] == [(16, 24), (8, 12), (4, 6),
                                                   (2, 3)]
    assert net.out_channels == tuple(o.shape[1] for o in outs)
    assert net.output_stride == 32


def test_fc_backbone_is_stride_8():
    """The FC network: a 256×256 crop gives a 32×32×512 map."""
    net = ResNet(depth=18, strides=(1, 2, 1, 1)).eval()
    with torch.no_grad():
        (out, ) = net(torch.randn(1, 3, 256, 256))
    assert out.shape == (1, 512, 32, 32)
    assert net.output_stride == 8
    # Every conv of layer3/layer4, the downsample included, has stride 1.
    for name, m in net.named_modules():
        if name.startswith(('layer3', 'layer4')) and isinstance(
                m, torch.nn.Conv2d):
            assert m.stride == (1, 1), name


def test_semantic_backbone_drops_layer4():
    net = ResNet(depth=50, num_stages=3, strides=(1, 2, 1),
                 out_indices=(2, )).eval()
    assert not hasattr(net, 'layer4')
    with torch.no_grad():
        (out, ) = net(torch.randn(2, 3, 65, 99))
    # Odd sizes round up at each stride-2 step: 65 -> 33 -> 17 -> 9.
    assert out.shape == (2, 1024, 9, 13)


def test_torchvision_parameter_names():
    keys = set(ResNet(depth=50).state_dict())
    for k in ('conv1.weight', 'bn1.running_mean', 'layer1.0.conv3.weight',
              'layer1.0.downsample.0.weight', 'layer4.2.bn3.bias'):
        assert k in keys


def test_reference_initialisation():
    torch.manual_seed(0)
    net = ResNet(depth=18)
    net.init_weights()
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            last_in_block = name.endswith('bn2') and name.startswith('layer')
            assert torch.all(m.weight == (0 if last_in_block else 1)), name
            assert torch.all(m.bias == 0), name
    # Kaiming normal, fan_out: std = sqrt(2 / (out_channels·k·k)).
    w = net.layer4[1].conv1.weight
    assert w.std().item() == pytest.approx((2 / (512 * 9))**0.5, rel=0.05)
    # Zero-init residual: a fresh block is the identity on ReLU'd inputs.
    net.eval()
    x = torch.relu(torch.randn(1, 64, 8, 8))
    with torch.no_grad():
        assert torch.allclose(net.layer1[0](x), x)


def test_without_zero_init():
    net = ResNet(depth=18, zero_init_residual=False)
    net.init_weights()
    assert torch.all(net.layer1[0].bn2.weight == 1)


@pytest.mark.parametrize('kwargs,match', [
    (dict(depth=20), 'depth'),
    (dict(num_stages=5), 'num_stages'),
    (dict(strides=(1, 2)), 'strides'),
    (dict(num_stages=3, strides=(1, 2, 1), out_indices=(3, )),
     'out_indices'),
    (dict(out_indices=()), 'out_indices'),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises((ValueError, KeyError), match=match):
        ResNet(**kwargs)
