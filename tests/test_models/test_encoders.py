import pytest
import torch
import torch.nn.functional as F

from sfc_plugin.models import (
    CorrespondenceEncoder,
    FusedCorrespondenceEncoder,
    ResNet,
    load_backbone_checkpoint,
)
from sfc_plugin.utils import register_all_modules

register_all_modules()

R50_L3 = dict(type='ResNet', depth=50, num_stages=3, strides=(1, 2, 1),
              out_indices=(2, ))
R18_L3 = dict(type='ResNet', depth=18, num_stages=3, strides=(1, 2, 1),
              out_indices=(2, ))


def randomised(net):
    torch.manual_seed(0)
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t))
    return net


def prefixed(state, prefix):
    return {prefix + k: v for k, v in state.items()}


@pytest.fixture(scope='module')
def r50():
    # A full classification ResNet-50, as pre-training methods save it.
    return randomised(ResNet(depth=50, out_indices=(3, )))


def assert_loaded(target, source):
    own = target.state_dict()
    src = source.state_dict()
    for k, v in own.items():
        assert torch.equal(v, src[k]), k


def test_moco_layout(tmp_path, r50):
    state = {
        **prefixed(r50.state_dict(), 'module.encoder_k.'),
        **prefixed(r50.state_dict(), 'module.encoder_q.'),
        'module.encoder_q.fc.0.weight': torch.zeros(2048, 2048),
        'module.queue': torch.zeros(128, 10),
    }
    # The momentum encoder differs: the query encoder must be chosen.
    state['module.encoder_k.conv1.weight'] = torch.zeros(64, 3, 7, 7)
    torch.save({'epoch': 200, 'arch': 'resnet50', 'state_dict': state},
               tmp_path / 'moco.pth.tar')
    net = ResNet(depth=50, num_stages=3, strides=(1, 2, 1), out_indices=(2, ))
    assert load_backbone_checkpoint(
        net, str(tmp_path / 'moco.pth.tar')) == 'module.encoder_q.'
    assert_loaded(net, r50)


def test_torchvision_layout_without_batch_counters(tmp_path, r50):
    state = {k: v for k, v in r50.state_dict().items()
             if not k.endswith('num_batches_tracked')}
    state['fc.weight'] = torch.zeros(1000, 2048)
    torch.save(state, tmp_path / 'tv.pth')
    enc = CorrespondenceEncoder(R50_L3, checkpoint=str(tmp_path / 'tv.pth'))
    for k, v in enc.backbone.state_dict().items():
        if not k.endswith('num_batches_tracked'):
            assert torch.equal(v, r50.state_dict()[k]), k


def test_sfc_reference_and_own_layouts(tmp_path):
    fc = randomised(ResNet(depth=18, strides=(1, 2, 1, 1)))
    target = randomised(ResNet(depth=18, strides=(1, 2, 1, 1)))
    ref = {'model': {**prefixed(fc.state_dict(), 'online_encoder.net.'),
                     **prefixed(target.state_dict(), 'target_encoder.net.')},
           'epoch': 10}
    torch.save(ref, tmp_path / 'sfc_ref.pth')
    enc = CorrespondenceEncoder(R18_L3, checkpoint=str(tmp_path /
                                                       'sfc_ref.pth'))
    assert_loaded(enc.backbone, fc)

    ours = {'meta': {'iter': 5}, 'state_dict': {
        **prefixed(fc.state_dict(), 'backbone.'),
        **prefixed(target.state_dict(), 'target_net.backbone.')}}
    torch.save(ours, tmp_path / 'iter_5.pth')
    enc = CorrespondenceEncoder(R18_L3, checkpoint=str(tmp_path /
                                                       'iter_5.pth'))
    assert_loaded(enc.backbone, fc)


def test_missing_keys_and_unknown_layouts_are_listed(tmp_path, r50):
    state = prefixed(r50.state_dict(), 'module.encoder_q.')
    del state['module.encoder_q.layer3.5.bn3.weight']
    torch.save({'state_dict': state}, tmp_path / 'partial.pth')
    with pytest.raises(KeyError, match=r'partial.pth.*\n.*layer3.5.bn3'):
        CorrespondenceEncoder(R50_L3, checkpoint=str(tmp_path /
                                                     'partial.pth'))
    torch.save({'state_dict': {'foo.weight': torch.zeros(3)}},
               tmp_path / 'alien.pth')
    with pytest.raises(KeyError, match='unknown layout'):
        CorrespondenceEncoder(R50_L3, checkpoint=str(tmp_path / 'alien.pth'))
    with pytest.raises(FileNotFoundError, match='nothing.pth'):
        CorrespondenceEncoder(R50_L3, checkpoint=str(tmp_path /
                                                     'nothing.pth'))
    # A ResNet-18 checkpoint for a ResNet-50 model: wrong shapes or keys.
    torch.save(ResNet(depth=18).state_dict(), tmp_path / 'r18.pth')
    with pytest.raises((KeyError, ValueError), match='r18.pth'):
        CorrespondenceEncoder(R50_L3, checkpoint=str(tmp_path / 'r18.pth'))


@pytest.mark.parametrize('dtype, refused', [
    (torch.int64, True), (torch.bool, True), (torch.float16, False)])
def test_weights_of_another_kind_of_type_are_refused(tmp_path, dtype,
                                                     refused):
    """Integer (or boolean) weights for floating-point parameters used to
    be cast silently by load_state_dict; float16 ones load."""
    source = randomised(ResNet(**{k: v for k, v in R18_L3.items()
                                  if k != 'type'}))
    state = source.state_dict()
    state['conv1.weight'] = state['conv1.weight'].to(dtype)
    torch.save(state, tmp_path / 'typed.pth')
    if refused:
        with pytest.raises(ValueError, match=r'typed.pth" holds weights of '
                           r'another kind of type than ResNet.s .*'
                           rf"\('conv1.weight', '{str(dtype)[6:]}', "
                           r"'float32'\)"):
            CorrespondenceEncoder(R18_L3, checkpoint=str(tmp_path /
                                                         'typed.pth'))
    else:
        CorrespondenceEncoder(R18_L3, checkpoint=str(tmp_path / 'typed.pth'))


class Evil:

    def __reduce__(self):
        return (print, ('pwned', ))


def test_pickled_objects_are_refused(tmp_path):
    torch.save({'state_dict': {'x': torch.zeros(1)}, 'evil': Evil()},
               tmp_path / 'evil.pth')
    with pytest.raises(RuntimeError, match='weights_only=True'):
        CorrespondenceEncoder(R18_L3, checkpoint=str(tmp_path / 'evil.pth'))


def test_fusion_affinity_is_weighted_mean_of_cosines():
    torch.manual_seed(0)
    fused = FusedCorrespondenceEncoder(
        semantic=dict(type='CorrespondenceEncoder', backbone=R50_L3),
        fine_grained=dict(type='CorrespondenceEncoder', backbone=R18_L3),
        fc_weight=1.75).eval()
    assert fused.out_channels == 1024 + 256
    images = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        f = fused(images)
        fs = fused.semantic(images)
        ff = fused.fine_grained(images)
    assert f.shape == (1, 1280, 5, 7)
    assert torch.allclose(f.norm(dim=1), torch.ones(1, 5, 7), atol=1e-5)
    lam2 = 1.75**2
    cos = torch.einsum('cp,cq->pq', f[0].flatten(1), f[0].flatten(1))
    cos_s = torch.einsum('cp,cq->pq', fs[0].flatten(1), fs[0].flatten(1))
    cos_f = torch.einsum('cp,cq->pq', ff[0].flatten(1), ff[0].flatten(1))
    assert torch.allclose(cos, (cos_s + lam2 * cos_f) / (1 + lam2),
                          atol=1e-5)
    assert torch.allclose(fs.norm(dim=1), torch.ones(1, 5, 7), atol=1e-5)
    assert F.normalize(ff, dim=1).shape == ff.shape
