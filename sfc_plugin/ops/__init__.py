from .topk_window_match import (
                                topk_window_match,
                                topk_window_match_dense,
                                window_mask,
)

__all__ = ['topk_window_match', 'topk_window_match_dense', 'window_mask']
