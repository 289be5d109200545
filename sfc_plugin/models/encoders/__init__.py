from .checkpoint_loading import (
                                 CheckpointKeyError,
                                 find_prefix,
                                 load_backbone_checkpoint,
                                 read_checkpoint,
                                 select_backbone_weights,
                                 state_dict_of,
)
from .correspondence_encoder import (
                                 CorrespondenceEncoder,
                                 FusedCorrespondenceEncoder,
)
from .inference_copy import ReducedPrecisionEncoder, fold_batch_norms

__all__ = [
    'CorrespondenceEncoder', 'FusedCorrespondenceEncoder',
    'load_backbone_checkpoint', 'find_prefix', 'CheckpointKeyError',
    'read_checkpoint', 'select_backbone_weights', 'state_dict_of',
    'fold_batch_norms', 'ReducedPrecisionEncoder'
]
