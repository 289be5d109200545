"""benchmarks/train_speed.py: its variants and its kernel profile, which
run for real only on a GPU, checked here where they can be."""
import argparse
import os.path as osp
import sys
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import AmpOptimWrapper

from sfc_plugin.utils import register_all_modules

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(REPO, 'benchmarks'))
import train_speed  # noqa: E402


@pytest.fixture
def cfg():
    register_all_modules()
    return Config.fromfile(osp.join(REPO, 'configs', 'fc_ytvos.py'))


def options(**kw):
    return argparse.Namespace(**dict(dict(
        device='cpu', amp=False, channels_last=False, crop=64, warmup=1,
        iters=1), **kw))


def test_the_no_scaler_variant_is_autocast_with_a_plain_wrapper(cfg):
    model, wrapper, context = train_speed.build(cfg, options(),
                                                'autocast-no-scaler')
    assert not isinstance(wrapper, AmpOptimWrapper)
    with context():
        assert torch.is_autocast_enabled('cpu')
        assert torch.get_autocast_dtype('cpu') == torch.bfloat16
    its, loss, _ = train_speed.bench(cfg, 2, options(),
                                     'autocast-no-scaler')
    assert its > 0 and torch.isfinite(torch.tensor(loss))


def test_the_fused_variant_asks_adam_for_its_fused_kernel(cfg, monkeypatch):
    built = {}

    def fake_build(model, wrapper_cfg):
        built.update(wrapper_cfg)
        return None

    monkeypatch.setattr(train_speed, 'build_optim_wrapper', fake_build)
    train_speed.build(cfg, options(), 'amp-fused-adam')
    assert built['type'] == 'AmpOptimWrapper'
    assert built['dtype'] == 'bfloat16'
    assert built['optimizer'] == dict(type='Adam', lr=1e-3,
                                      weight_decay=0.0, fused=True)
    # The config's own dict is left as it was.
    assert 'fused' not in cfg.optim_wrapper['optimizer']


def test_the_profile_sums_each_kernel_over_the_steps(cfg, monkeypatch):
    """What the profile does with the profiler's events: device events
    summed by name and divided by the steps, CPU events left out, the
    busiest first with their share of the busy time."""
    cuda = torch.autograd.DeviceType.CUDA
    cpu = torch.autograd.DeviceType.CPU

    def event(name, us, device_type=cuda):
        return SimpleNamespace(
            name=name, device_type=device_type,
            time_range=SimpleNamespace(elapsed_us=lambda: us))

    events = [event('gemm', 300.0), event('bn', 50.0), event('gemm', 300.0),
              event('aten::conv2d', 9999.0, cpu), event('relu', 125.0),
              event('relu', 125.0)]

    class FakeProfile:

        def __init__(self, activities):
            assert torch.profiler.ProfilerActivity.CUDA in activities

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def events(self):
            return events

    monkeypatch.setattr(torch.profiler, 'profile', FakeProfile)
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda: None)
    prof = train_speed.profile_kernels(cfg, 2, options(), steps=2, top=2)
    assert prof['busy_ms'] == pytest.approx(0.45)
    assert prof['kernels'] == [('gemm', 0.3, 1, pytest.approx(600 / 900)),
                               ('relu', 0.125, 1, pytest.approx(250 / 900))]
    assert prof['wall_ms'] > 0
