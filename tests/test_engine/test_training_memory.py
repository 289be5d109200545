"""The host-memory check before training (SFCRunner.train), on the
generated frames of fc_demo.py at a small size."""
import copy
import random

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from sfc_plugin.engine.runner import training_memory
from sfc_plugin.engine.runner.training_memory import (
    STEP_OVERHEAD,
    WORKER_BYTES,
    check_training_memory,
    saved_tensor_bytes,
)
from sfc_plugin.registry import MODELS
from sfc_plugin.utils import memory, register_all_modules
from sfc_plugin.utils.memory import HostMemoryError

from ..conftest import REPO


@pytest.fixture(scope='module')
def cfg():
    register_all_modules()
    cfg = Config.fromfile(str(REPO / 'configs' / 'fc_demo.py'))
    cfg.train_dataloader.dataset.num_frames = 4
    cfg.train_dataloader.dataset.img_size = (48, 64)
    cfg.train_dataloader.dataset.pipeline[0].size = 64
    return cfg


@pytest.fixture(scope='module')
def model(cfg):
    return MODELS.build(cfg.model).train()


def loader(cfg, **settings):
    return Runner.build_dataloader(dict(cfg.train_dataloader, **settings),
                                   seed=0)


def test_saved_tensors_grow_linearly_with_the_batch(cfg, model):
    dl = loader(cfg, num_workers=0)
    sample = dl.dataset[0]
    sizes = [saved_tensor_bytes(model, dl.collate_fn([sample] * n))
             for n in (1, 2, 4)]
    per_sample = sizes[1] - sizes[0]
    assert per_sample > 0
    assert sizes[2] == pytest.approx(sizes[0] + 3 * per_sample, rel=0.05)


def test_the_probe_leaves_the_model_and_the_random_streams(cfg, model):
    """BatchNorm statistics, weights, and Python's, NumPy's and torch's
    random generators are as they were: training goes on exactly as
    without the check."""
    dl = loader(cfg, num_workers=0)
    state = copy.deepcopy(model.state_dict())
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    check_training_memory(model, dl, processes=1)
    drawn = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    assert drawn == (random.random(), np.random.rand(), torch.rand(1).item())
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)


def test_a_batch_the_host_cannot_hold_is_refused_with_what_fits(
        cfg, model, monkeypatch):
    dl = loader(cfg, batch_size=4, num_workers=2)
    estimate = check_training_memory(model, dl, processes=1)
    assert estimate['step'] > 0 and estimate['data'] > 2 * WORKER_BYTES
    need = estimate['total']
    monkeypatch.setattr(memory, 'available_host_memory', lambda: need)
    check_training_memory(model, dl, processes=1)  # just fits
    monkeypatch.setattr(memory, 'available_host_memory', lambda: need - 1)
    with pytest.raises(HostMemoryError) as err:
        check_training_memory(model, dl, processes=1)
    message = str(err.value)
    assert message.startswith('train: batch_size=4 at ')
    assert 'num_workers=2 and the CPU training step' in message
    assert ('lower train_dataloader.batch_size (at most 3 fit) or '
            'num_workers, or train on a GPU') in message
    # Two processes on the host need twice as much.
    monkeypatch.setattr(memory, 'available_host_memory', lambda: need)
    with pytest.raises(HostMemoryError, match='× 2 processes on this host'):
        check_training_memory(model, dl, processes=2)


def test_workers_and_the_step_are_counted(cfg, model, monkeypatch):
    """Each worker adds its own memory and prefetch_factor batches; a
    model off the CPU adds no step (its memory is the GPU's)."""
    none = check_training_memory(model, loader(cfg, num_workers=0),
                                 processes=1)
    two = check_training_memory(model, loader(cfg, num_workers=2),
                                processes=1)
    assert two['step'] == pytest.approx(none['step'])
    assert two['data'] > none['data'] + 2 * WORKER_BYTES
    monkeypatch.setattr(training_memory, 'saved_tensor_bytes',
                        lambda *a: pytest.fail('probed a GPU model'))
    meta = torch.nn.Module()
    meta.weight = torch.nn.Parameter(torch.empty(1, device='meta'))
    off_cpu = check_training_memory(meta, loader(cfg, num_workers=0),
                                    processes=1)
    assert off_cpu['step'] == 0 and off_cpu['data'] == none['data']
    assert STEP_OVERHEAD >= 1


def test_the_losss_pair_workspace_is_counted_and_checked_first(
        cfg, model, monkeypatch):
    """The loss's (P1, P2) position-pair maps grow with the square of the
    crop's area: at crop 1024 the estimate was 5.9 GiB for a step of 19.9
    GB, and at crop 4096 the probe itself was killed. They are counted, and
    checked before any probe."""
    dl = loader(cfg, num_workers=0)
    one = dl.collate_fn([dl.dataset[0]])
    # 64x64 views, stride 8: 64 positions an image, 64**2 pairs.
    workspace = model.loss_workspace_bytes(one)
    assert workspace == model.PAIR_WORKSPACE_BYTES * 64**2
    fixed, per_sample = training_memory.cpu_step_memory(
        model, dl.collate_fn, dl.dataset[0])
    saved = saved_tensor_bytes(model, dl.collate_fn([dl.dataset[0]] * 2)) - (
        saved_tensor_bytes(model, one))
    assert per_sample == pytest.approx(STEP_OVERHEAD * saved + workspace)
    monkeypatch.setattr(memory, 'available_host_memory',
                        lambda: 2 * workspace - 1)
    monkeypatch.setattr(training_memory, 'saved_tensor_bytes',
                        lambda *a: pytest.fail('probed a crop too large'))
    with pytest.raises(HostMemoryError, match=r'^train: the loss of 2 images '
                       r'\(views of 64×64\), the smallest probe of the step'
                       '.*lower the crop size'):
        training_memory.cpu_step_memory(model, dl.collate_fn,
                                        dl.dataset[0])


@pytest.mark.parametrize('settings, message', [
    (dict(batch_size=0), 'train_dataloader.batch_size must be >= 1, got 0'),
    (dict(num_workers=-1), 'train_dataloader.num_workers must be >= 0'),
])
def test_bad_loader_settings_are_named(cfg, model, settings, message):
    dl = loader(cfg, num_workers=0)
    for key, value in settings.items():
        object.__setattr__(dl, key, value)  # past DataLoader's own checks
    with pytest.raises(ValueError, match=message):
        check_training_memory(model, dl, processes=1)


@pytest.mark.parametrize('env, expected', [
    ({}, 1),
    ({'LOCAL_WORLD_SIZE': '4'}, 4),
    ({'SLURM_NTASKS_PER_NODE': '8(x2)'}, 8),
    ({'LOCAL_WORLD_SIZE': '2', 'SLURM_NTASKS_PER_NODE': '8'}, 2),
    ({'LOCAL_WORLD_SIZE': 'x', 'SLURM_NTASKS_PER_NODE': '0'}, 1),
])
def test_local_processes_from_the_launchers(monkeypatch, env, expected):
    for name in ('LOCAL_WORLD_SIZE', 'SLURM_NTASKS_PER_NODE'):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert training_memory.local_processes() == expected


def test_a_loader_without_a_sample_is_not_sized(model):
    """An iterable dataset has no first sample, and an empty one's error is
    its own: neither is probed."""

    class Stream(torch.utils.data.IterableDataset):

        def __iter__(self):
            return iter([])

    for dataset in (Stream(), []):
        estimate = check_training_memory(
            model, torch.utils.data.DataLoader(dataset, batch_size=2),
            processes=1)
        assert estimate['total'] == 0
