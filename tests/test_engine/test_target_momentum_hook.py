import math
from types import SimpleNamespace

import pytest
from mmengine.logging import MessageHub

from sfc_plugin.engine.hooks import CosineTargetMomentumHook, cosine_momentum


class FakeModel:
    target_momentum = 0.5


def fake_runner(iteration, max_iters, resume=False):
    return SimpleNamespace(
        model=FakeModel(), iter=iteration, max_iters=max_iters,
        message_hub=MessageHub.get_instance('test_target_momentum'),
        logger=SimpleNamespace(warning=lambda m: None, info=lambda m: None),
        _resume=resume)


@pytest.mark.parametrize('k,expected', [(0, 0.99), (500, 0.995),
                                        (1000, 1.0)])
def test_schedule_at_start_middle_end(k, expected):
    assert cosine_momentum(k, 1000, 0.99, 1.0) == pytest.approx(expected)


def test_schedule_formula_and_clamping():
    for k in (1, 123, 999):
        expected = 1 - (1 - 0.99) * (math.cos(math.pi * k / 1000) + 1) / 2
        assert cosine_momentum(k, 1000, 0.99, 1.0) == pytest.approx(expected)
    assert cosine_momentum(2000, 1000, 0.99, 1.0) == 1.0
    assert cosine_momentum(-5, 1000, 0.99, 1.0) == pytest.approx(0.99)


def test_hook_sets_and_logs_momentum_before_each_iteration():
    hook = CosineTargetMomentumHook()
    runner = fake_runner(30, 60)
    hook.before_train_iter(runner, batch_idx=30)
    assert runner.model.target_momentum == pytest.approx(0.995)
    assert runner.message_hub.get_scalar(
        'train/target_momentum').current() == pytest.approx(0.995)


def test_checkpoint_round_trip():
    hook = CosineTargetMomentumHook()
    runner = fake_runner(40, 40)
    hook.before_train_iter(runner, batch_idx=39)
    checkpoint = {'meta': {}}
    hook.before_save_checkpoint(runner, checkpoint)
    state = checkpoint['meta']['target_momentum']
    assert state == dict(momentum=1.0, base_momentum=0.99, end_momentum=1.0,
                         max_iters=40)
    resumed = fake_runner(40, 60, resume=True)
    hook.after_load_checkpoint(resumed, checkpoint)
    assert resumed.model.target_momentum == 1.0


def test_resume_without_saved_momentum_is_refused():
    hook = CosineTargetMomentumHook()
    with pytest.raises(KeyError, match='target_momentum'):
        hook.after_load_checkpoint(fake_runner(0, 10, resume=True),
                                   {'meta': {}})
    # Loading weights only (load_from without resume) is fine.
    hook.after_load_checkpoint(fake_runner(0, 10), {'meta': {}})


def test_invalid_arguments():
    with pytest.raises(ValueError, match='base_momentum'):
        CosineTargetMomentumHook(base_momentum=1.2)
    with pytest.raises(ValueError, match='positive'):
        CosineTargetMomentumHook().momentum_at(0, 0)
    runner = fake_runner(0, 10)
    runner.model = object()
    with pytest.raises(TypeError, match='target_momentum'):
        CosineTargetMomentumHook().before_train(runner)
