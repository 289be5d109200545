from .label_propagator import LabelPropagator

__all__ = ['LabelPropagator']
