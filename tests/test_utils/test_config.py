"""sfc_plugin.utils.config: what a config reads is known to the tools that
must never write it."""
from sfc_plugin.utils.config import config_inputs, load_config


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
