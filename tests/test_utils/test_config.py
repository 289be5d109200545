"""sfc_plugin.utils.config: what a config reads is known to the tools that
must never write it."""
import pytest

from sfc_plugin.utils.config import (
    build_from_config,
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
