from .anchors import Anchor, resolve_anchors
from .inference import (
    DEFAULT_CONFIG,
    ReadAhead,
    TrackedFrame,
    apply_backend,
    apply_checkpoint,
    check_backend_checkpoint,
    find_config,
    first_frame_inputs,
    inference_video,
    init_tracker,
    label_kind,
    label_loader,
    track_video,
    tracker_config,
    tracking_pipeline,
)
from .results_writer import TrackingResultsWriter

__all__ = [
    'track_video', 'init_tracker', 'inference_video', 'tracker_config',
    'tracking_pipeline', 'label_kind', 'apply_checkpoint', 'apply_backend',
    'check_backend_checkpoint',
    'find_config', 'first_frame_inputs', 'ReadAhead', 'TrackedFrame',
    'DEFAULT_CONFIG',
    'TrackingResultsWriter', 'Anchor', 'resolve_anchors', 'label_loader'
]
