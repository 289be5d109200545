from .finite_training_hook import DivergedTrainingError, FiniteTrainingHook
from .target_momentum_hook import CosineTargetMomentumHook, cosine_momentum

__all__ = [
    'CosineTargetMomentumHook', 'DivergedTrainingError', 'FiniteTrainingHook',
    'cosine_momentum'
]
