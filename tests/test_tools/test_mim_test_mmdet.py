"""`mim test mmdet` with sfc_plugin's mmdet configs gives the masks and the
J&F of `mim test sfc_plugin` (real mmdet 3.x and full mmcv)."""
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.mmdet

#: Frames per sequence: the first, three scored, the last.
FRAMES = 5
#: Shared val sequences used (of 6): two runs of mim test over all 6 took
#: 96 s of the suite; equal masks and scores need no more.
SEQUENCES = 3


@pytest.fixture()
def shared_val_subset(davis2016, tmp_path):
    """The first frames of the first shared DAVIS val sequences (linked,
    not copied) in the DAVIS layout."""
    root = tmp_path / 'davis'
    names = (davis2016 / 'ImageSets' / 'val.txt').read_text().split()[
        :SEQUENCES]
    for name in names:
        for kind, ext in (('JPEGImages', 'jpg'), ('Annotations', 'png')):
            folder = root / kind / '480p' / name
            folder.mkdir(parents=True)
            for t in range(FRAMES):
                (folder / f'{t:05d}.{ext}').symlink_to(
                    davis2016 / kind / '480p' / name / f'{t:05d}.{ext}')
    (root / 'ImageSets').mkdir()
    (root / 'ImageSets' / 'val.txt').write_text('\n'.join(names) + '\n')
    return root, names


@pytest.fixture()
def fc_checkpoint(repo, tmp_path):
    """An FC training checkpoint as sfc_plugin's training writes it."""
    from mmengine.config import Config

    from sfc_plugin.registry import MODELS
    from sfc_plugin.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    torch.manual_seed(3)
    model = MODELS.build(Config.fromfile(
        str(repo / 'configs' / 'fc_ytvos.py')).model)
    path = tmp_path / 'iter_1.pth'
    torch.save({'meta': {'iter': 1}, 'state_dict': model.state_dict()}, path)
    return path


def mim_test(package, config, checkpoint, root, out, tmp_path, env):
    """`mim test PACKAGE CONFIG` with the installed packages."""
    env = dict(env)
    env.pop('PYTHONPATH')  # the installed sfc_plugin, not this checkout
    proc = subprocess.run([
        sys.executable, '-m', 'mim', 'test', package, str(config),
        '--checkpoint', str(checkpoint), '--work-dir',
        str(tmp_path / f'work_{package}'), '--cfg-options',
        f'test_dataloader.dataset.data_root={root}',
        'test_dataloader.dataset.ann_file=ImageSets/val.txt',
        'test_dataloader.num_workers=0', f'test_evaluator.output_dir={out}'
    ], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    return log


def test_mim_test_mmdet_gives_the_masks_and_scores_of_sfc_plugin(
        mmdet, repo, shared_val_subset, fc_checkpoint, tmp_path,
        subprocess_env):
    root, names = shared_val_subset
    outs = {}
    for package, config in [
            ('sfc_plugin', repo / 'configs' / 'fc_davis.py'),
            ('mmdet', repo / 'configs' / 'mmdet' / 'fc_davis_mmdet.py')]:
        outs[package] = tmp_path / f'results_{package}'
        log = mim_test(package, config, fc_checkpoint, root,
                       outs[package], tmp_path, subprocess_env)
        assert 'davis/J&F-Mean' in log
        assert 'randomly initialised' not in log
    masks = sorted(p.relative_to(outs['mmdet'])
                   for p in outs['mmdet'].glob('*/*.png'))
    assert len(masks) == len(names) * FRAMES
    assert masks == sorted(p.relative_to(outs['sfc_plugin'])
                           for p in outs['sfc_plugin'].glob('*/*.png'))
    for mask in masks:
        assert (outs['mmdet'] / mask).read_bytes() == (
            outs['sfc_plugin'] / mask).read_bytes(), mask
    for csv in ('global_results-val.csv', 'per-sequence_results-val.csv'):
        assert (outs['mmdet'] / csv).read_text() == (
            outs['sfc_plugin'] / csv).read_text()
