from .extension import (
                        load_native_ops,
                        native_ops_available,
                        native_ops_status,
                        neighbour_weights_dtype,
)
from .topk_window_match import (
                                aggregate_labels,
                                check_decomposed_memory,
                                check_integer,
                                check_match_settings,
                                check_real,
                                cpu_bf16_kernel,
                                cuda_kernel_config,
                                decomposed_bytes,
                                matching_kernel,
                                most_eligible_keys,
                                topk_window_match,
                                topk_window_match_decomposed,
                                topk_window_match_dense,
                                topk_window_match_reference,
                                topk_window_neighbours,
                                topk_window_neighbours_reference,
                                window_mask,
)

__all__ = [
    'aggregate_labels', 'check_decomposed_memory', 'check_integer',
    'check_match_settings', 'check_real',
    'cpu_bf16_kernel', 'cuda_kernel_config', 'decomposed_bytes',
    'load_native_ops',
    'matching_kernel', 'most_eligible_keys', 'native_ops_available',
    'neighbour_weights_dtype',
    'native_ops_status', 'topk_window_match', 'topk_window_match_decomposed',
    'topk_window_match_dense', 'topk_window_match_reference',
    'topk_window_neighbours', 'topk_window_neighbours_reference',
    'window_mask'
]
