from .correspondence import (
    encoder_features,
    feature_cell,
    mark_point,
    render_heatmap,
    similarity_maps,
    titled_panel,
)
from .overlay import (
    PALETTE_BGR,
    draw_keypoints,
    draw_mask_overlay,
    mark_anchor_frame,
)

__all__ = [
    'draw_mask_overlay', 'draw_keypoints', 'mark_anchor_frame',
    'PALETTE_BGR', 'encoder_features', 'feature_cell', 'similarity_maps',
    'render_heatmap', 'mark_point', 'titled_panel'
]
