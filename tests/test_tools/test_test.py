import csv
import subprocess

import numpy as np
from PIL import Image

from ..test_evaluation.davis_fixtures import moving_squares, write_davis


def run_fc_davis(python, repo, env, root, tmp_path, launcher=(), extra=(),
                 out_name='results', options=(), metric='davis/J&F-Mean'):
    """tools/test.py with configs/fc_davis.py on generated DAVIS data."""
    out = tmp_path / out_name
    proc = subprocess.run([
        python, *launcher,
        str(repo / 'tools' / 'test.py'),
        str(repo / 'configs' / 'fc_davis.py'), *extra, '--work-dir',
        str(tmp_path / 'w'), '--cfg-options',
        f'test_dataloader.dataset.data_root={root}',
        'test_dataloader.dataset.ann_file=ImageSets/val.txt',
        'test_dataloader.num_workers=0', f'test_evaluator.output_dir={out}',
        *options, *(['--launcher', 'pytorch'] if launcher else [])
    ], env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert metric in log
    return out, log


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


def test_environment_settings_are_named_before_the_runner(
        python, repo, tmp_path, subprocess_env):
    """env_cfg=5 was mmengine's 'unexpected AttributeError'."""
    for tool in ('test.py', 'train.py'):
        proc = subprocess.run([
            python, str(repo / 'tools' / tool),
            str(repo / 'configs' / 'fc_davis.py'), '--work-dir',
            str(tmp_path / 'w'), '--cfg-options', 'env_cfg=5'
        ], env=subprocess_env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert proc.stderr == (f'{tool}: error: env_cfg must be a dict of '
                               "environment settings (mmengine's), got 5\n")
        assert not (tmp_path / 'w').exists()


def test_fc_davis_end_to_end_on_generated_videos(python, repo, tmp_path,
                                                 subprocess_env):
    """tools/test.py with the FC DAVIS config, a random-init network."""
    root = write_davis(tmp_path / 'davis', {
        'a': moving_squares(5, 64, 96, 2, seed=3),
        'b': moving_squares(4, 64, 96, 1, seed=4),
    })
    out, log = run_fc_davis(python, repo, subprocess_env, root, tmp_path)
    assert 'randomly initialised' in log
    assert sorted(p.name for p in (out / 'a').iterdir()) == [
        f'{t:05d}.png' for t in range(5)
    ]
    assert Image.open(out / 'b' / '00003.png').mode == 'P'
    first = np.array(Image.open(out / 'a' / '00000.png'))
    assert set(np.unique(first)) == {0, 1, 2}
    with open(out / 'global_results-val.csv') as f:
        header, values = list(csv.reader(f))
    assert header[0] == 'J&F-Mean' and 0 <= float(values[0]) <= 1


def test_distributed_evaluation_keeps_videos_whole(python, repo, tmp_path,
                                                   subprocess_env):
    """Two processes (gloo, CPU): videos dealt whole, every frame scored."""
    root = write_davis(tmp_path / 'davis', {
        name: moving_squares(4, 48, 64, 1, seed=i)
        for i, name in enumerate(['a', 'b', 'c'])
    })
    out, _ = run_fc_davis(
        python, repo, subprocess_env, root, tmp_path,
        launcher=('-m', 'torch.distributed.run', '--nproc_per_node=2',
                  '--master_port=29541'))
    for name in 'abc':
        assert len(list((out / name).glob('*.png'))) == 4
    with open(out / 'per-sequence_results-val.csv') as f:
        rows = list(csv.reader(f))[1:]
    assert [r[0] for r in rows] == ['a_1', 'b_1', 'c_1']


def test_onnxruntime_backend_gives_the_torch_scores(python, repo, tmp_path,
                                                    subprocess_env):
    """The same checkpoint through PyTorch and through its ONNX export
    (--backend onnxruntime) scores the same on generated videos."""
    import torch
    from mmengine.config import Config

    from sfc_plugin.deploy import export_encoder
    from sfc_plugin.models.backbones import ResNet
    from sfc_plugin.utils import register_all_modules

    root = write_davis(tmp_path / 'davis', {
        'a': moving_squares(5, 64, 96, 2, seed=5),
    })
    ckpt = tmp_path / 'fc.pth'
    torch.save(ResNet(depth=18, num_stages=3, strides=(1, 2, 1),
                      out_indices=(2, )).state_dict(), ckpt)
    register_all_modules()
    onnx_path = tmp_path / 'fc.onnx'
    export_encoder(Config.fromfile(str(repo / 'configs' / 'fc_davis.py')),
                   str(onnx_path), [str(root / 'JPEGImages' / '480p' / 'a')],
                   checkpoint=str(ckpt))
    scores = {}
    for name, extra in [('torch', [str(ckpt)]),
                        ('ort', [str(ckpt), '--backend', 'onnxruntime',
                                 '--backend-model', str(onnx_path)])]:
        out, _ = run_fc_davis(python, repo, subprocess_env, root, tmp_path,
                              extra=extra, out_name=name)
        with open(out / 'global_results-val.csv') as f:
            scores[name] = [float(v) for v in list(csv.reader(f))[1]]
    assert np.allclose(scores['torch'], scores['ort'], atol=1e-3), scores
    # Another checkpoint beside the ONNX file: the score would be logged
    # against weights that never ran.
    other = tmp_path / 'other.pth'
    torch.save({k: v + 1 for k, v in torch.load(ckpt).items()}, other)
    proc = subprocess.run([
        python, str(repo / 'tools' / 'test.py'),
        str(repo / 'configs' / 'fc_davis.py'), str(other), '--backend',
        'onnxruntime', '--backend-model', str(onnx_path), '--work-dir',
        str(tmp_path / 'w2')
    ], env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert 'Traceback' not in proc.stderr, proc.stderr
    assert (f'test.py: error: "{onnx_path}" was exported from "{ckpt}", not '
            f'from "{other}"') in proc.stderr, proc.stderr


def test_backend_needs_its_model(python, repo, subprocess_env, tmp_path):
    proc = subprocess.run([
        python, str(repo / 'tools' / 'test.py'),
        str(repo / 'configs' / 'fc_davis.py'), '--backend', 'onnxruntime'
    ], env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert 'needs a backend model' in proc.stderr, proc.stderr
    proc = subprocess.run([
        python, str(repo / 'tools' / 'test.py'),
        str(repo / 'configs' / 'fc_davis.py'), '--backend', 'onnxruntime',
        '--backend-model', str(tmp_path / 'no.onnx')
    ], env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert 'Backend model not found' in proc.stderr, proc.stderr


def test_ground_truth_anchors_every_n_frames(python, repo, tmp_path,
                                             subprocess_env):
    """`--cfg-options test_dataloader.dataset.anchor_interval=N`: the
    tracker takes every N-th frame's annotation as an anchor (its result is
    that annotation), scored apart from the paper protocol."""
    root = write_davis(tmp_path / 'davis', {
        'a': moving_squares(7, 64, 96, 2, seed=3),
    })
    out, log = run_fc_davis(
        python, repo, subprocess_env, root, tmp_path,
        options=['test_dataloader.dataset.anchor_interval=3'],
        out_name='anchored', metric='davis/anchors_every_3/J&F-Mean')
    for t in (3, 6):
        assert np.array_equal(
            np.array(Image.open(out / 'a' / f'{t:05d}.png')),
            np.array(Image.open(root / 'Annotations' / '480p' / 'a' /
                                f'{t:05d}.png')))
    assert not (out / 'global_results-val.csv').exists()
    assert (out / 'global_results-val-anchors_every_3.csv').is_file()
