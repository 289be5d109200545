"""benchmarks/train_speed.py: its variants and its kernel profile, which
run for real only on a GPU, checked here where they can be."""
import argparse
import os.path as osp
import sys

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


def test_the_profile_is_per_step(cfg):
    """profile_kernels profiles ``steps`` real training steps after a
    warm-up (here on the CPU: no kernels, the host's operators per step)."""
    prof = train_speed.profile_kernels(cfg, 2, options(), steps=2, top=2)
    assert prof['wall_ms'] > 0 and prof['busy_ms'] is None
    assert prof['kernels'] == []
    # Two forwards of each network, the loss and the backward: hundreds of
    # operators a step, the same count each step.
    assert prof['host_ops'] > 100 and prof['host_ops'] == int(
        prof['host_ops'])
