"""End-to-end training with tools/train.py and mim, on generated frames."""
import os
import shutil
import subprocess

import pytest
import torch

from ..conftest import TINY_TRAIN_OPTIONS, load_tool, run_in_process


def train(python, repo, env, work_dir, *extra, options=(), check=True,
          child=None):
    """tools/train.py on fc_demo.py at the tiny settings. A run expected
    to fail (``check=False``) runs in this process unless ``child``: its
    error line is what is checked, and a child's start-up costs 3-4 s; a
    run that trains runs in a child, whose log is the test's to read."""
    args = [
        str(repo / 'configs' / 'fc_demo.py'), '--work-dir',
        str(work_dir), *extra, '--cfg-options', *TINY_TRAIN_OPTIONS, *options
    ]
    if not (check if child is None else child):
        return run_in_process(repo, 'tools/train.py', *args)
    proc = subprocess.run([python, str(repo / 'tools' / 'train.py'), *args],
                          env=env, capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        pytest.fail(f'training failed:\n{proc.stdout[-3000:]}\n'
                    f'{proc.stderr[-5000:]}')
    return proc


def error_line(proc) -> str:
    """The one error line of a run that failed as a user's mistake
    (status 1), without its ``train.py: error: `` prefix."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith('train.py: error: '), proc.stderr[-3000:]
    return line[len('train.py: error: '):]


def load(path):
    # SFCRunner's checkpoints need nothing allow-listed.
    return torch.load(path, map_location='cpu', weights_only=True)


@pytest.fixture()
def train_tool():
    return load_tool('tools/train.py')


@pytest.fixture(scope='module')
def trained(tmp_path_factory, python, repo):
    """4 iterations, checkpoint every 2: iter_2.pth and iter_4.pth."""
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS='1')
    work_dir = tmp_path_factory.mktemp('fc_tiny')
    proc = train(python, repo, env, work_dir, options=[
        'train_cfg.max_iters=4', 'default_hooks.checkpoint.interval=2'])
    return work_dir, proc, env


def test_train_logs_loss_and_momentum_and_saves(trained):
    work_dir, proc, _ = trained
    log = proc.stdout + proc.stderr
    assert 'Iter(train) [4/4]' in log
    assert 'loss:' in log and 'target_momentum:' in log
    assert (work_dir / 'iter_2.pth').is_file()
    assert (work_dir / 'iter_4.pth').is_file()
    ckpt = load(work_dir / 'iter_4.pth')
    assert ckpt['meta']['iter'] == 4
    state = ckpt['meta']['target_momentum']
    # The momentum used at the last iteration (k = 3 of K = 4).
    assert state['momentum'] == pytest.approx(
        1 - 0.01 * (torch.cos(torch.tensor(torch.pi * 3 / 4)).item() + 1) / 2)
    assert any(k.startswith('target_net.backbone.') for k in
               ckpt['state_dict'])


def test_plain_mmengine_checkpoint_is_refused_with_a_clear_error(
        trained, python, repo, tmp_path):
    """A checkpoint pickling HistoryBuffer objects (plain mmengine)."""
    from mmengine.logging import HistoryBuffer
    work_dir, _, env = trained
    ckpt = load(work_dir / 'iter_2.pth')
    scalars = ckpt['message_hub']['log_scalars']
    scalars['train/loss'] = HistoryBuffer([1.0], [1])
    torch.save(ckpt, tmp_path / 'plain.pth')
    proc = train(python, repo, env, tmp_path / 'w', '--resume',
                 str(tmp_path / 'plain.pth'), check=False)
    assert proc.returncode != 0
    assert 'Cannot load checkpoint' in proc.stderr
    assert 'plain.pth' in proc.stderr and 'weights_only=True' in proc.stderr


def test_resume_restores_optimizer_target_and_schedule(trained, python, repo,
                                                       tmp_path):
    work_dir, _, env = trained
    resumed_dir = tmp_path / 'resumed'
    resumed_dir.mkdir()
    shutil.copy(work_dir / 'iter_2.pth', resumed_dir / 'iter_2.pth')
    (resumed_dir / 'last_checkpoint').write_text(
        str(resumed_dir / 'iter_2.pth'))
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in env
    proc = train(python, repo, env, resumed_dir, '--resume', options=[
        'train_cfg.max_iters=6', 'default_hooks.checkpoint.interval=2'])
    log = proc.stdout + proc.stderr
    assert 'resumed epoch: 0, iter: 2' in log
    assert 'Iter(train) [3/6]' in log and 'Iter(train) [1/6]' not in log

    before = load(resumed_dir / 'iter_2.pth')
    after = load(resumed_dir / 'iter_6.pth')
    assert after['meta']['iter'] == 6
    assert after['meta']['target_momentum']['max_iters'] == 6
    # Adam's step count continues from the checkpoint's.
    steps_before = {s['step'].item() for s in
                    before['optimizer']['state'].values()}
    steps_after = {s['step'].item() for s in
                   after['optimizer']['state'].values()}
    assert steps_before == {2.0} and steps_after == {6.0}
    # Momentum restored then annealed; ends at the last iteration's value.
    assert after['meta']['target_momentum']['momentum'] == pytest.approx(
        1 - 0.01 * (torch.cos(torch.tensor(torch.pi * 5 / 6)).item() + 1) / 2)


def test_resume_from_explicit_checkpoint(trained, python, repo, tmp_path):
    work_dir, _, env = trained
    proc = train(python, repo, env, tmp_path, '--resume',
                 str(work_dir / 'iter_4.pth'),
                 options=['train_cfg.max_iters=5'])
    assert 'resumed epoch: 0, iter: 4' in proc.stdout + proc.stderr
    assert (tmp_path / 'iter_5.pth').is_file()


def test_checkpoint_with_missing_keys_is_named(trained, python, repo,
                                               tmp_path):
    work_dir, _, env = trained
    ckpt = load(work_dir / 'iter_2.pth')
    del ckpt['state_dict']['predictor.mlp.3.bias']
    broken = tmp_path / 'broken.pth'
    torch.save(ckpt, broken)
    proc = train(python, repo, env, tmp_path / 'w', '--resume', str(broken),
                 options=['train_cfg.max_iters=3'], check=False)
    assert proc.returncode != 0
    assert 'predictor.mlp.3.bias' in proc.stderr
    assert 'broken.pth' in proc.stderr

    del ckpt['message_hub']
    torch.save(ckpt, broken)
    proc = train(python, repo, env, tmp_path / 'w', '--resume', str(broken),
                 options=['train_cfg.max_iters=3'], check=False)
    assert proc.returncode != 0
    assert 'broken.pth": it lacks message_hub' in proc.stderr


@pytest.mark.parametrize('how', ['--resume', 'load_from'])
def test_a_cut_checkpoint_is_named(trained, python, repo, tmp_path, how):
    """A checkpoint cut short (a copy interrupted, a full disk) is one
    line naming it, whether resumed from or loaded."""
    work_dir, _, env = trained
    cut = tmp_path / 'cut.pth'
    cut.write_bytes((work_dir / 'iter_2.pth').read_bytes()[:50000])
    extra, options = ((['--resume', str(cut)], []) if how == '--resume' else
                      ([], [f'load_from={cut}']))
    proc = train(python, repo, env, tmp_path / 'w', *extra,
                 options=['train_cfg.max_iters=3'] + options, check=False)
    assert error_line(proc) == (
        f'Checkpoint "{cut}" is not a PyTorch checkpoint '
        '(neither a whole torch.save archive nor a pickle: another kind of '
        'file, or one cut short)')


def test_missing_checkpoint_is_named(python, repo, tmp_path,
                                     subprocess_env):
    proc = train(python, repo, subprocess_env, tmp_path, '--resume',
                 str(tmp_path / 'nope.pth'), check=False)
    assert proc.returncode != 0
    assert 'nope.pth' in proc.stderr and 'not found' in proc.stderr


def test_unknown_type_is_named(python, repo, tmp_path, subprocess_env):
    proc = train(python, repo, subprocess_env, tmp_path,
                 options=['model.backbone.type=ResNext404'], check=False)
    assert proc.returncode != 0
    assert 'ResNext404 is not in the sfc_plugin::model registry' in \
        proc.stderr


@pytest.mark.parametrize('option, message', [
    # 0 and -5 trained nothing and succeeded; NaN failed naming no setting.
    ({'train_cfg.max_iters': 0}, 'train_cfg.max_iters must be >= 1, got 0'),
    ({'train_cfg.max_iters': -5}, 'train_cfg.max_iters must be >= 1, got -5'),
    ({'train_cfg.max_iters': float('nan')},
     'train_cfg.max_iters must be an integer'),
    ({'train_cfg.val_interval': 0.5},
     'train_cfg.val_interval must be an integer'),
    # A TypeError of torch, and "None is not a callable object".
    ({'optim_wrapper.optimizer.lr': 'abc'},
     'optim_wrapper.optimizer.lr must be a real number'),
    ({'optim_wrapper.optimizer.lr': None},
     'optim_wrapper.optimizer.lr must be a real number'),
    ({'optim_wrapper.optimizer.lr': float('inf')},
     'optim_wrapper.optimizer.lr must be a finite number >= 0, got inf'),
    ({'optim_wrapper.optimizer.type': 'Adamm'},
     'optim_wrapper.optimizer.type "Adamm" is not a registered optimizer'),
    ({'randomness.seed': 'abc'}, 'randomness.seed must be an integer'),
    ({'train_dataloader.prefetch_factor': 10**9},
     'train_dataloader.prefetch_factor must be in [1, 1024]'),
])
def test_training_settings_are_checked_by_name(repo, train_tool, option,
                                               message):
    cfg = train_tool.config_io.load_config(
        str(repo / 'configs' / 'fc_demo.py'), option)
    with pytest.raises(ValueError) as err:
        train_tool.check_train_loop(cfg)
    assert message in str(err.value)


@pytest.mark.parametrize('option, message', [
    ('train_dataloader.batch_size=100000',
     'train: batch_size=100000 at '),
    ('train_dataloader.num_workers=1000000',
     'num_workers=1000000 and the CPU training step'),
    ('train_dataloader.batch_size=2.5',
     'train: train_dataloader.batch_size must be an integer, got 2.5'),
    ('train_dataloader.num_workers=-1',
     'train: train_dataloader.num_workers must be >= 0, got -1'),
])
def test_a_loader_the_host_cannot_hold_is_refused(python, repo, tmp_path,
                                                  subprocess_env, option,
                                                  message):
    """Before any worker starts: one line naming the setting, no
    checkpoint, instead of a run the system kills."""
    proc = train(python, repo, subprocess_env, tmp_path, options=[option],
                 check=False)
    assert message in error_line(proc)
    assert 'Traceback' not in proc.stderr
    assert not list(tmp_path.glob('*.pth'))


def test_missing_frame_folder_is_named(python, repo, tmp_path,
                                       subprocess_env):
    cmd = [
        python, str(repo / 'tools' / 'train.py'),
        str(repo / 'configs' / 'fc_ytvos.py'), '--work-dir', str(tmp_path),
        '--cfg-options', f'train_dataloader.dataset.data_root={tmp_path}/x'
    ]
    proc = subprocess.run(cmd, env=subprocess_env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0
    assert f'frame folder not found: "{tmp_path}/x/JPEGImages"' in proc.stderr


def test_amp_without_gpu_is_refused(python, repo, tmp_path, subprocess_env):
    if torch.cuda.is_available():
        pytest.skip('a GPU is present: --amp is valid here')
    proc = train(python, repo, subprocess_env, tmp_path, '--amp',
                 check=False)
    assert proc.returncode != 0
    assert '--amp needs a CUDA GPU' in proc.stderr


def test_two_process_pytorch_launcher(python, repo, tmp_path,
                                      subprocess_env):
    """torchrun, 2 processes, gloo on CPU: DDP through mmengine's launcher."""
    cmd = [
        python, '-m', 'torch.distributed.run', '--nproc_per_node=2',
        '--master_port=29533',
        str(repo / 'tools' / 'train.py'),
        str(repo / 'configs' / 'fc_demo.py'), '--launcher', 'pytorch',
        '--work-dir', str(tmp_path), '--cfg-options', *TINY_TRAIN_OPTIONS,
        'train_cfg.max_iters=3'
    ]
    proc = subprocess.run(cmd, env=subprocess_env, capture_output=True,
                          text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert 'Distributed launcher: pytorch' in log
    assert 'Distributed training: True' in log
    assert 'GPU number: 2' in log  # mmengine's name for the world size
    assert 'Iter(train) [3/3]' in log
    ckpt = load(tmp_path / 'iter_3.pth')
    assert ckpt['meta']['iter'] == 3
    assert not any(k.startswith('module.') for k in ckpt['state_dict'])


def test_mim_train_from_another_directory(tmp_path, subprocess_env):
    """`mim train sfc_plugin configs/fc_demo.py` with the installed package."""
    if shutil.which('mim') is None:
        pytest.fail('mim is not installed (see README)')
    env = dict(subprocess_env)
    env.pop('PYTHONPATH')  # the installed package, not this checkout
    cmd = [
        'mim', 'train', 'sfc_plugin', 'configs/fc_demo.py', '--work-dir',
        str(tmp_path / 'w'), '--cfg-options', *TINY_TRAIN_OPTIONS,
        'train_cfg.max_iters=2'
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert 'Training finished successfully' in log
    assert (tmp_path / 'w' / 'iter_2.pth').is_file()


def test_diverged_training_stops_without_a_checkpoint(python, repo,
                                                      tmp_path,
                                                      subprocess_env):
    """lr=1e30 fills the weights with NaN after the first step: the run
    stopped there, where it used to save NaN checkpoints and exit 0."""
    proc = train(python, repo, subprocess_env, tmp_path, check=False,
                 options=['train_cfg.max_iters=4',
                          'default_hooks.checkpoint.interval=2',
                          'optim_wrapper.optimizer.lr=1e30'])
    assert error_line(proc).startswith(
        'Training diverged: the loss is nan at iteration 2')
    assert not list(tmp_path.glob('*.pth'))


@pytest.mark.parametrize('case, match', [
    ('config folder', 'The config copy the run writes ".*fc_demo.py" is the '
     'config'),
    ('load_from inside', 'load_from ".*old.pth" lies inside work_dir'),
    ('absolute prefix', 'lies inside the data_prefix.img_path folder'),
])
def test_work_dirs_over_inputs_are_refused(repo, tmp_path, train_tool, case,
                                           match):
    config = tmp_path / 'configs' / 'fc_demo.py'
    config.parent.mkdir()
    config.write_text(f"_base_ = ['{repo}/configs/fc_demo.py']\n")
    before = config.read_text()
    (tmp_path / 'frames').mkdir()
    (tmp_path / 'w').mkdir()
    (tmp_path / 'w' / 'old.pth').write_bytes(b'weights of an earlier run')
    args = dict(
        work_dir=dict(
            {'config folder': tmp_path / 'configs',
             'absolute prefix': tmp_path / 'frames' / 'w'}
        ).get(case, tmp_path / 'w'),
        options=dict(
            {'load_from inside': {'load_from': str(tmp_path / 'w' /
                                                   'old.pth')},
             'absolute prefix': {
                 'train_dataloader.dataset.data_root': str(tmp_path / 'r'),
                 'train_dataloader.dataset.data_prefix': dict(
                     img_path=str(tmp_path / 'frames'))}}).get(case, {}))
    cli = train_tool.parse_args([str(config), '--work-dir',
                                 str(args['work_dir'])])
    cli.cfg_options = args['options']
    cfg = train_tool.merge_args(train_tool.load_config(cli), cli)
    with pytest.raises(ValueError, match=match):
        train_tool.check_outputs(cfg, 'train')
    assert config.read_text() == before


@pytest.mark.parametrize('inside', ['r', 'frames'])
def test_results_inside_any_data_folder_are_refused(repo, tmp_path,
                                                     train_tool, inside):
    """test_evaluator.output_dir inside the data root or inside a
    data_prefix folder outside it (only the root was checked)."""
    cli = train_tool.parse_args([f'{repo}/configs/sfc_davis.py',
                                 '--work-dir', str(tmp_path / 'w')])
    cli.cfg_options = {
        'test_dataloader.dataset.data_root': str(tmp_path / 'r'),
        'test_dataloader.dataset.data_prefix': dict(
            img_path=str(tmp_path / 'frames')),
        'test_evaluator.output_dir': str(tmp_path / inside / 'results')}
    cfg = train_tool.merge_args(train_tool.load_config(cli), cli)
    what = ('data root' if inside == 'r' else
            'data_prefix.img_path folder')
    with pytest.raises(ValueError, match=f'test_evaluator.output_dir .* '
                       f'lies inside the {what}'):
        train_tool.check_outputs(cfg, 'test')


def test_load_from_another_models_checkpoint_is_refused(python, repo,
                                                        tmp_path,
                                                        subprocess_env):
    """Loaded leniently, a checkpoint sharing no weight with the model left
    it randomly initialised, with only a warning."""
    foreign = tmp_path / 'classifier.pth'
    torch.save(dict(state_dict={'fc.weight': torch.ones(10, 4)}), foreign)
    proc = train(python, repo, subprocess_env, tmp_path / 'w', check=False,
                 options=['train_cfg.max_iters=1', f'load_from={foreign}'])
    assert error_line(proc).startswith(
        f'Checkpoint "{foreign}" holds none of the weights '
        'of FineGrainedCorrespondence (its 1 keys, e.g. "fc.weight"')


def test_auto_resume_takes_the_newest_whole_checkpoint(trained, python,
                                                       repo, tmp_path):
    """Killed after iter_4.pth was saved but before last_checkpoint named
    it, and while saving iter_6.pth: mmengine resumed from iter_2.pth and
    overwrote iter_4.pth."""
    work_dir, _, env = trained
    resumed = tmp_path / 'w'
    resumed.mkdir()
    for name in ('iter_2.pth', 'iter_4.pth'):
        shutil.copy(work_dir / name, resumed / name)
    (resumed / 'iter_6.pth').write_bytes(
        (work_dir / 'iter_4.pth').read_bytes()[:30000])
    (resumed / 'last_checkpoint').write_text(str(resumed / 'iter_2.pth'))
    before = (resumed / 'iter_4.pth').read_bytes()
    proc = train(python, repo, env, resumed, '--resume',
                 options=['train_cfg.max_iters=5'])
    log = proc.stdout + proc.stderr
    assert 'resumed epoch: 0, iter: 4' in log
    assert f'passing over "{resumed / "iter_6.pth"}", cut short' in log
    assert (resumed / 'iter_5.pth').is_file()
    assert (resumed / 'iter_4.pth').read_bytes() == before
    # Resuming a finished run trains nothing: an error, not a success.
    proc = train(python, repo, env, resumed, '--resume',
                 str(resumed / 'iter_5.pth'),
                 options=['train_cfg.max_iters=5'], check=False)
    assert error_line(proc) == (
        f'Checkpoint "{resumed / "iter_5.pth"}" is at '
        'iteration 5, where the run ends (train_cfg.max_iters): nothing is '
        'left to train; raise train_cfg.max_iters to go on')


def test_a_frame_that_cannot_be_decoded_is_named(python, repo, tmp_path,
                                                 subprocess_env):
    """An empty frame among good ones, read by a data worker: one line
    naming it (an OpenCV assertion inside the worker's traceback before)."""
    import cv2
    import numpy as np
    frames = tmp_path / 'frames'
    frames.mkdir()
    for t in range(3):
        cv2.imwrite(str(frames / f'{t:05d}.jpg'),
                    np.full((48, 64, 3), 60 * t, np.uint8))
    (frames / '00003.jpg').write_bytes(b'')
    cmd = [
        python, str(repo / 'tools' / 'train.py'),
        str(repo / 'configs' / 'fc_ytvos.py'), '--work-dir',
        str(tmp_path / 'w'), '--cfg-options',
        f'train_dataloader.dataset.data_root={frames}',
        "train_dataloader.dataset.data_prefix.img_path=''",
        'train_dataloader.batch_size=4', 'train_dataloader.num_workers=1',
        'train_dataloader.persistent_workers=False',
        'train_dataloader.dataset.pipeline.1.size=32', 'train_cfg.max_iters=1'
    ]
    proc = subprocess.run(cmd, env=subprocess_env, capture_output=True,
                          text=True, timeout=300)
    assert error_line(proc) == (
        f'Cannot decode frame "{frames / "00003.jpg"}": the '
        'file is empty')
