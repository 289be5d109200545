import subprocess
import sys

from mmengine.registry import MODELS as MMENGINE_MODELS

from sfc_plugin import registry


def test_registries_are_children_of_mmengine():
    assert registry.MODELS.parent is MMENGINE_MODELS
    assert registry.MODELS.scope == 'sfc_plugin'
    for name in ('DATASETS', 'TRANSFORMS', 'HOOKS', 'METRICS', 'RUNNERS',
                 'FUNCTIONS', 'LOOPS', 'OPTIM_WRAPPERS', 'VISUALIZERS'):
        assert getattr(registry, name).scope == 'sfc_plugin', name


def test_config_builds_without_manual_imports(repo):
    """Only the config's default_scope: the registries import the rest."""
    code = f'''
import sys
from mmengine.config import Config
from mmengine.registry import DefaultScope, init_default_scope
cfg = Config.fromfile({str(repo / "configs" / "fc_demo.py")!r})
assert cfg.default_scope == 'sfc_plugin'
init_default_scope(cfg.default_scope)
from mmengine.registry import MODELS, DATASETS, HOOKS
model = MODELS.build(cfg.model)
assert type(model).__name__ == 'FineGrainedCorrespondence', type(model)
ds = DATASETS.build(cfg.train_dataloader.dataset)
assert ds[0]['inputs'].shape == (2, 3, 128, 128)
hook = HOOKS.build(cfg.custom_hooks[0])
assert type(hook).__name__ == 'CosineTargetMomentumHook'
'''
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, cwd=repo, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_models_build_their_parts_in_their_own_scope():
    """Named from another codebase's config (its default scope), an
    sfc_plugin model builds its parts as sfc_plugin types: a bare type that
    the other scope also has never resolves to the other scope's class."""
    import torch.nn as nn
    from mmengine.registry import DefaultScope, Registry

    from sfc_plugin.models.backbones import ResNet
    from sfc_plugin.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    other = Registry('model', parent=MMENGINE_MODELS, scope='otherlib')

    @other.register_module(name='ResNet')
    class OtherResNet(nn.Module):
        def __init__(self, **kwargs):
            raise AssertionError('the other scope\'s ResNet was built')

    tracker = dict(
        type='sfc_plugin.SFCTracker',
        encoder=dict(type='CorrespondenceEncoder',
                     backbone=dict(type='ResNet', depth=18, num_stages=3,
                                   strides=(1, 2, 1), out_indices=(2, ))),
        propagator=dict(type='LabelPropagator'),
        label_codec=dict(type='MaskCodec'))
    with DefaultScope.overwrite_default_scope('otherlib'):
        model = other.build(tracker)
        # The caller's scope is back once the model is built.
        assert DefaultScope.get_current_instance().scope_name == 'otherlib'
    assert type(model).__name__ == 'SFCTracker'
    assert isinstance(model.encoder.backbone, ResNet)
    assert type(model.propagator).__name__ == 'LabelPropagator'
