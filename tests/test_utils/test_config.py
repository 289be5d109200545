"""sfc_plugin.utils.config: what a config reads is known to the tools that
must never write it."""
import pytest

from sfc_plugin.utils.config import (
    build_from_config,
    check_env_cfg,
    config_inputs,
    load_config,
    named_setting_error,
)


def test_config_inputs_are_its_files_and_the_files_it_names(repo, tmp_path):
    ckpt = tmp_path / 'fc.pth'
    ckpt.write_bytes(b'weights')
    config = tmp_path / 'cfg.py'
    config.write_text(f"_base_ = ['{repo}/configs/fc_davis.py']\n"
                      f"extra = dict(files=['{ckpt}', 'missing.pth'])\n")
    cfg = load_config(str(config), {'load_from': str(ckpt)})
    found = config_inputs(cfg)
    assert found['config'] == str(config)
    assert str(repo / 'configs' / 'fc_davis.py') in found.values()
    assert str(repo / 'configs' / '_base_' / 'default_runtime.py'
               ) in found.values()
    assert found['config setting extra.files.0'] == str(ckpt)
    assert found['config setting load_from'] == str(ckpt)
    # Folders and names of nothing are not inputs: a config may name the
    # folder a tool writes into.
    assert 'missing.pth' not in found.values()
    assert all(not v.endswith('work_dirs') for v in found.values())


class _Part:

    def __init__(self, size=1):
        self.size = size


class _Whole:

    def __init__(self, part=None, parts=()):
        self.part = part


def _registry():
    from mmengine.registry import Registry
    registry = Registry('config test')
    registry.register_module(module=_Part)
    registry.register_module(module=_Whole)
    return registry


def test_a_setting_nothing_takes_is_named_by_its_key():
    with pytest.raises(ValueError) as err:
        build_from_config(_registry(), dict(type='_Part', sise=2),
                          'model.encoder')
    assert str(err.value) == (
        '_Part takes no setting "sise": remove or correct '
        'model.encoder.sise (from the config or --cfg-options)')
    # Built by its parent: found where it is nested.
    node = dict(type='_Whole', part=dict(type='_Part', sise=2))
    err = TypeError("_Part.__init__() got an unexpected keyword argument "
                    "'sise'")
    assert 'correct model.part.sise (' in str(named_setting_error(node, err))
    assert build_from_config(_registry(),
                             dict(type='_Part', size=3)).size == 3


def test_the_same_key_in_two_places_is_named_by_itself():
    """Two _Part configs both with the key: which one is not known."""
    node = dict(type='_Whole', parts=[dict(type='_Part', sise=2),
                                      dict(type='_Part', sise=3)])
    err = TypeError("_Part.__init__() got an unexpected keyword argument "
                    "'sise'")
    assert str(named_setting_error(node, err)) == (
        '_Part takes no setting "sise": remove or correct "sise" (from the '
        'config or --cfg-options)')
    other = TypeError('unsupported operand')
    assert named_setting_error(node, other) is other


@pytest.mark.parametrize('env, message', [
    (5, "env_cfg must be a dict of environment settings (mmengine's), "
     "got 5"),
    ({'cudnn_benchmak': True}, "env_cfg.cudnn_benchmak is no setting of "
     "mmengine's Runner (it reads cudnn_benchmark, mp_cfg, dist_cfg, "
     "resource_limit): remove or correct it"),
    ({'cudnn_benchmark': 'no'}, "env_cfg.cudnn_benchmark must be True or "
     "False, got 'no'"),
    ({'mp_cfg': 'fork'}, "env_cfg.mp_cfg must be a dict, got 'fork'"),
    ({'dist_cfg': 3}, 'env_cfg.dist_cfg must be a dict, got 3'),
    ({'mp_cfg': {'threads': 2}}, "env_cfg.mp_cfg.threads is no setting of "
     "mmengine's set_multi_processing (it takes mp_start_method, "
     "opencv_num_threads)"),
    ({'mp_cfg': {'mp_start_method': 'frok'}}, 'env_cfg.mp_cfg.'
     'mp_start_method must be one of '),
    ({'mp_cfg': {'mp_start_method': ['fork']}}, 'env_cfg.mp_cfg.'
     'mp_start_method must be one of '),
    ({'mp_cfg': {'opencv_num_threads': 2**40}}, 'config: env_cfg.mp_cfg.'
     'opencv_num_threads must be in [-2147483648, 2147483647], got '
     '1099511627776'),
    ({'resource_limit': float('nan')}, 'config: env_cfg.resource_limit must '
     'be an integer, got nan (float)'),
    ({'resource_limit': -1}, 'config: env_cfg.resource_limit must be >= 0, '
     'got -1'),
])
def test_environment_settings_are_named_where_mmengine_would_fail(
        env, message):
    """mmengine's Runner applies env_cfg unchecked: env_cfg=5 was an
    AttributeError, a misspelt key was ignored."""
    with pytest.raises(ValueError) as err:
        check_env_cfg({'env_cfg': env})
    assert str(err.value).startswith(message)


def test_environment_settings_mmengine_takes_pass(repo):
    cfg = load_config(str(repo / 'configs' / 'fc_ytvos.py'))
    assert check_env_cfg(cfg) is cfg.env_cfg
    assert check_env_cfg({}) == {}
    env = dict(cudnn_benchmark=1, resource_limit=2**70, dist_cfg={},
               mp_cfg=dict(mp_start_method='spawn', opencv_num_threads=-1))
    assert check_env_cfg({'env_cfg': env}) is env
