"""Deployment: ONNX export of the encoders and the propagation step, and
ONNX Runtime sessions that run them."""
from .encoder_export import (
                             PARTS,
                             build_encoder,
                             encoder_config,
                             export_encoder,
                             load_frames,
)
from .onnx_export import ExportError, export_onnx
from .onnxruntime_ops import has_custom_nodes, onnxruntime_session
from .propagation_step import (
                               PropagationStep,
                               example_inputs,
                               export_checked_step,
                               export_propagation_step,
                               step_from_config,
)

__all__ = [
    'PARTS', 'ExportError', 'PropagationStep',
    'build_encoder', 'encoder_config', 'example_inputs',
    'export_checked_step', 'export_encoder', 'export_onnx',
    'export_propagation_step', 'has_custom_nodes', 'load_frames',
    'onnxruntime_session', 'step_from_config'
]
