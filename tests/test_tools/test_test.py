import subprocess


def test_test_tool_refuses_a_training_only_config(python, repo, tmp_path,
                                                  subprocess_env):
    ckpt = tmp_path / 'model.pth'
    ckpt.write_bytes(b'')
    proc = subprocess.run([
        python, str(repo / 'tools' / 'test.py'),
        str(repo / 'configs' / 'fc_ytvos.py'), str(ckpt)
    ], env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert 'fc_ytvos.py defines no test_dataloader, test_cfg, ' \
        'test_evaluator' in proc.stderr


def test_test_tool_names_a_missing_checkpoint(python, repo, tmp_path,
                                              subprocess_env):
    proc = subprocess.run([
        python, str(repo / 'tools' / 'test.py'),
        str(repo / 'configs' / 'fc_ytvos.py'), str(tmp_path / 'nope.pth'),
        '--cfg-options', 'test_dataloader.batch_size=1',
        'test_cfg.type=TestLoop', 'test_evaluator.type=Evaluator'
    ], env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert 'nope.pth' in proc.stderr and 'not found' in proc.stderr
