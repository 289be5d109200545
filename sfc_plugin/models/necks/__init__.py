from .conv_mlp import ConvMLP

__all__ = ['ConvMLP']
