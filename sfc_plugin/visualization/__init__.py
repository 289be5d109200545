from .correspondence import (
    encoder_features,
    feature_cell,
    mark_point,
    render_heatmap,
    similarity_maps,
    titled_panel,
)
from .overlay import PALETTE_BGR, draw_keypoints, draw_mask_overlay

__all__ = [
    'draw_mask_overlay', 'draw_keypoints', 'PALETTE_BGR', 'encoder_features',
    'feature_cell', 'similarity_maps', 'render_heatmap', 'mark_point',
    'titled_panel'
]
