from .davis import (
                    boundary_f_measure,
                    boundary_map,
                    boundary_tolerance,
                    per_frame_statistics,
                    region_similarity,
)

__all__ = [
    'region_similarity', 'boundary_map', 'boundary_tolerance',
    'boundary_f_measure', 'per_frame_statistics'
]
