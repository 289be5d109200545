import math
from typing import Optional

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from sfc_plugin.registry import HOOKS

DATA_BATCH = Optional[dict]


def cosine_momentum(step: int, total: int, base: float, end: float) -> float:
    """``m_k = end - (end - base)·(cos(πk/K) + 1)/2``, k clamped to [0, K]."""
    k = min(max(step, 0), total)
    return end - (end - base) * (math.cos(math.pi * k / total) + 1) / 2


@HOOKS.register_module()
class CosineTargetMomentumHook(Hook):
    """Anneals the target network's momentum from ``base`` to ``end``.

    Before iteration k of K it sets the model's ``target_momentum`` to
    ``m_k = end - (end - base)·(cos(πk/K) + 1)/2`` (BYOL's schedule, paper
    appendix A.1), so the EMA update ``ξ ← m·ξ + (1 - m)·θ`` that the model
    applies before its target forward uses m_k. m is the weight of the old
    target, the reverse of mmengine's ``ExponentialMovingAverage``.

    The current momentum is logged as ``target_momentum`` and stored in the
    checkpoint's ``meta['target_momentum']`` together with the schedule; on
    resume the hook checks that the checkpoint carries it and restores it
    (a checkpoint loaded with ``load_from`` alone may lack it).

    Args:
        base_momentum (float): m at iteration 0. Defaults to 0.99.
        end_momentum (float): m at the last iteration. Defaults to 1.0.
    """

    priority = 'NORMAL'
    meta_key = 'target_momentum'

    def __init__(self, base_momentum: float = 0.99, end_momentum: float = 1.0):
        if not 0.0 <= base_momentum <= end_momentum <= 1.0:
            raise ValueError(
                'CosineTargetMomentumHook: need 0 <= base_momentum <= '
                f'end_momentum <= 1, got base_momentum={base_momentum}, '
                f'end_momentum={end_momentum}')
        self.base_momentum = base_momentum
        self.end_momentum = end_momentum

    @staticmethod
    def _model(runner):
        model = runner.model
        if is_model_wrapper(model):
            model = model.module
        if not hasattr(model, 'target_momentum'):
            raise TypeError(
                'CosineTargetMomentumHook needs a model with a '
                f'`target_momentum` attribute, got {type(model).__name__}')
        return model

    def momentum_at(self, step: int, total: int) -> float:
        """The scheduled momentum before iteration ``step`` of ``total``."""
        if total <= 0:
            raise ValueError('CosineTargetMomentumHook: the number of '
                             f'training iterations must be positive, got '
                             f'{total}')
        return cosine_momentum(step, total, self.base_momentum,
                               self.end_momentum)

    def before_train(self, runner) -> None:
        self._model(runner)

    def before_train_iter(self,
                          runner,
                          batch_idx: int,
                          data_batch: DATA_BATCH = None) -> None:
        momentum = self.momentum_at(runner.iter, runner.max_iters)
        self._model(runner).target_momentum = momentum
        runner.message_hub.update_scalar('train/target_momentum', momentum)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint.setdefault('meta', {})[self.meta_key] = dict(
            momentum=float(self._model(runner).target_momentum),
            base_momentum=self.base_momentum,
            end_momentum=self.end_momentum,
            max_iters=runner.max_iters)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get('meta', {}).get(self.meta_key)
        if state is None and not getattr(runner, '_resume', False):
            # Weights loaded to start a new run: the schedule starts afresh.
            return
        if state is None:
            raise KeyError(
                f'CosineTargetMomentumHook: the checkpoint has no '
                f'meta["{self.meta_key}"]; it was not written by an FC '
                'training run with this hook')
        if (state['base_momentum'], state['end_momentum']) != (
                self.base_momentum, self.end_momentum):
            runner.logger.warning(
                'CosineTargetMomentumHook: the checkpoint was trained with '
                f'momentum {state["base_momentum"]} -> {state["end_momentum"]}'
                f', this run uses {self.base_momentum} -> {self.end_momentum}')
        if state['max_iters'] != runner.max_iters:
            runner.logger.info(
                'CosineTargetMomentumHook: the schedule was laid over '
                f'{state["max_iters"]} iterations and continues over '
                f'{runner.max_iters}')
        self._model(runner).target_momentum = state['momentum']
