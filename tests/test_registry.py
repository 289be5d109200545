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
