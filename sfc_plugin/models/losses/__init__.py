from .dense_correspondence import (
                                   cell_centers,
                                   dense_cosine_loss,
                                   positive_mask,
)

__all__ = ['cell_centers', 'positive_mask', 'dense_cosine_loss']
