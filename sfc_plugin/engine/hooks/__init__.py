from .target_momentum_hook import CosineTargetMomentumHook, cosine_momentum

__all__ = ['CosineTargetMomentumHook', 'cosine_momentum']
