from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope

from sfc_plugin.registry import MODELS

CONFIGS = sorted((Path(__file__).resolve().parents[1] / 'configs').glob(
    '*.py'))


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.stem)
def test_config_builds_its_model(path):
    cfg = Config.fromfile(str(path))
    assert cfg.default_scope == 'sfc_plugin'
    init_default_scope('sfc_plugin')
    model = MODELS.build(cfg.model)
    assert model is not None
    if 'checkpoint_field' in cfg:
        # The field tools/test.py fills must exist in the model config.
        node = cfg
        for key in cfg.checkpoint_field.split('.'):
            assert key in node, cfg.checkpoint_field
            node = node[key]


def test_basenames_are_unique_for_mim():
    names = [p.name for p in (CONFIGS[0].parent).rglob('*.py')]
    assert len(names) == len(set(names))
