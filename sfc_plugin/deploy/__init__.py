"""Deployment: exportable modules, ONNX export and runtime sessions."""
from .onnxruntime_ops import has_custom_nodes, onnxruntime_session
from .propagation_step import (
                               PropagationStep,
                               example_inputs,
                               export_propagation_step,
)

__all__ = [
    'PropagationStep', 'example_inputs', 'export_propagation_step',
    'has_custom_nodes', 'onnxruntime_session'
]
