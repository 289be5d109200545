from types import SimpleNamespace

import pytest
import torch

from sfc_plugin.engine.hooks import DivergedTrainingError, FiniteTrainingHook
from sfc_plugin.registry import HOOKS


def runner(iteration=6):
    return SimpleNamespace(iter=iteration)


@pytest.mark.parametrize('loss', [torch.tensor(float('nan')),
                                  torch.tensor(float('inf')),
                                  float('-inf')])
def test_a_loss_that_is_not_finite_stops_training(loss):
    hook = FiniteTrainingHook()
    with pytest.raises(DivergedTrainingError,
                       match=f'the loss is {float(loss)} at iteration 7'):
        hook.after_train_iter(runner(), 0, outputs=dict(loss=loss))


def test_finite_losses_and_other_outputs_pass():
    hook = FiniteTrainingHook()
    hook.after_train_iter(runner(), 0, outputs=dict(loss=torch.tensor(-0.5),
                                                    positive_pairs=3.0))
    hook.after_train_iter(runner(), 0, outputs=None)
    # Only the configured entry is the loss.
    FiniteTrainingHook('loss_total').after_train_iter(
        runner(), 0, outputs=dict(loss=float('nan'), loss_total=1.0))


def test_a_checkpoint_of_weights_that_are_not_finite_is_not_saved():
    hook = FiniteTrainingHook()
    good = dict(state_dict={'w': torch.ones(3), 'step': torch.tensor(4)})
    hook.before_save_checkpoint(runner(), good)
    bad = dict(state_dict={'w': torch.tensor([1.0, float('nan')])})
    with pytest.raises(DivergedTrainingError,
                       match='weight "w" is not finite at iteration 6'):
        hook.before_save_checkpoint(runner(), bad)


def test_it_runs_before_the_checkpoint_hook_and_is_validated():
    from mmengine.hooks import CheckpointHook
    from mmengine.runner import get_priority
    hook = HOOKS.build(dict(type='FiniteTrainingHook'))
    assert get_priority(hook.priority) < get_priority(CheckpointHook.priority)
    with pytest.raises(ValueError, match='loss_key must be a non-empty'):
        FiniteTrainingHook('')
