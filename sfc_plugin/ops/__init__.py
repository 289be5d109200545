from .topk_window_match import topk_window_match, window_mask

__all__ = ['topk_window_match', 'window_mask']
