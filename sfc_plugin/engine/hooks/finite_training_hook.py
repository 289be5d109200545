import math
from typing import Optional

import torch
from mmengine.hooks import Hook

from sfc_plugin.registry import HOOKS

DATA_BATCH = Optional[dict]


class DivergedTrainingError(RuntimeError):
    """A loss or a weight that is no longer a finite number."""


@HOOKS.register_module()
class FiniteTrainingHook(Hook):
    """Stops training at the first loss that is not finite, and never saves
    a checkpoint holding a weight that is not.

    A learning rate far too high (or an infinite one), or NaN in the data
    preprocessor's statistics, makes the loss NaN or infinite; the optimiser
    then fills every weight with NaN and the run goes on to its end, saving
    checkpoints of nothing and exiting successfully. This hook raises
    :class:`DivergedTrainingError` naming the iteration instead. The loss is
    a number the logger reads every iteration anyway, so the check costs no
    extra device synchronisation; the weights are checked only when a
    checkpoint is about to be written (before the checkpoint hook, whose
    priority is lower).

    Args:
        loss_key (str): The entry of the model's outputs checked.
            Defaults to ``'loss'``.
    """

    # Before CheckpointHook (VERY_LOW) in after_train_iter.
    priority = 'ABOVE_NORMAL'

    def __init__(self, loss_key: str = 'loss'):
        if not isinstance(loss_key, str) or not loss_key:
            raise ValueError('FiniteTrainingHook: loss_key must be a '
                             f'non-empty string, got {loss_key!r}')
        self.loss_key = loss_key

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch: DATA_BATCH = None,
                         outputs: Optional[dict] = None) -> None:
        if not outputs or self.loss_key not in outputs:
            return
        loss = outputs[self.loss_key]
        value = float(loss.detach().float().mean()) if isinstance(
            loss, torch.Tensor) else float(loss)
        if not math.isfinite(value):
            raise DivergedTrainingError(
                f'Training diverged: the loss is {value} at iteration '
                f'{runner.iter + 1} (a learning rate too high, or data or '
                'settings that are not finite numbers); no checkpoint of this '
                'iteration is saved')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        for key, weight in (checkpoint.get('state_dict') or {}).items():
            if (isinstance(weight, torch.Tensor)
                    and weight.is_floating_point()
                    and not bool(torch.isfinite(weight).all())):
                raise DivergedTrainingError(
                    f'Training diverged: weight "{key}" is not finite at '
                    f'iteration {runner.iter} (a learning rate too high?); '
                    'the checkpoint is not saved')
