"""Encoders as reduced-precision tracking runs them: BatchNorms folded into
the convolutions, weights cast once."""
import copy
import itertools
import logging
from typing import Optional, Tuple

import torch
from mmengine.logging import print_log
from torch import nn
from torch.fx.experimental.optimization import fuse

from .correspondence_encoder import CorrespondenceEncoder


def fold_batch_norms(encoder: nn.Module) -> nn.Module:
    """A copy of an encoder for inference, with the BatchNorms of each
    :class:`CorrespondenceEncoder`'s backbone folded into the convolutions
    before them.

    In eval mode a BatchNorm is a fixed affine map per channel, so it folds
    into the preceding convolution's weights and bias (torch.fx ``fuse``):
    the same function, without a pass over each activation per BatchNorm.
    ``encoder`` itself is left as it is. A backbone torch.fx cannot trace
    (a custom one with data-dependent control flow) is copied unfolded,
    with a warning.

    Args:
        encoder (nn.Module): In eval mode; CorrespondenceEncoder,
            FusedCorrespondenceEncoder, or any module holding them.

    Returns:
        nn.Module: The folded copy, without gradients.
    """
    if encoder.training:
        raise ValueError('fold_batch_norms: the encoder is in training mode, '
                         'where BatchNorms use batch statistics, not the '
                         'running ones that fold; call .eval() first')
    folded = copy.deepcopy(encoder)
    for module in folded.modules():
        if not isinstance(module, CorrespondenceEncoder):
            continue
        try:
            module.backbone = fuse(module.backbone)
        except Exception as err:  # tracing a foreign backbone: any error
            print_log(
                f'fold_batch_norms: {type(module.backbone).__name__} could '
                f'not be traced by torch.fx ({type(err).__name__}: {err}); '
                'its BatchNorms stay unfolded (same result, slower)',
                logger='current', level=logging.WARNING)
    return folded.requires_grad_(False)


class ReducedPrecisionEncoder:
    """An encoder's folded copy (:func:`fold_batch_norms`) in a reduced
    type, channels-last, remade whenever the encoder's weights change.

    Under autocast every call would cast each weight again and run each
    BatchNorm as a pass of its own; the copy does neither (the FC ResNet-18
    at 480p in bf16 on a 2-core CPU: 0.062 → 0.055 s). It holds the
    weights once more, in the reduced type (half their float32 size).

    A change is seen from each parameter's and buffer's storage, version
    counter (bumped by every in-place write: ``load_state_dict``, optimiser
    steps, running statistics), type and device; the owner also calls
    :meth:`invalidate` when it is moved or cast.
    """

    def __init__(self):
        self._key: Optional[Tuple] = None
        self._copy: Optional[nn.Module] = None

    def invalidate(self) -> None:
        """Drops the copy: the next call makes it again."""
        self._key = self._copy = None

    def __call__(self, encoder: nn.Module, dtype: torch.dtype) -> nn.Module:
        """The folded copy of ``encoder`` (in eval mode) in ``dtype``."""
        key = (dtype, ) + tuple(
            (t.data_ptr(), t._version, t.dtype, t.device)
            for t in itertools.chain(encoder.parameters(), encoder.buffers()))
        if key != self._key:
            self.invalidate()  # the old copy goes before the new one comes
            self._copy = fold_batch_norms(encoder).to(
                dtype=dtype, memory_format=torch.channels_last)
            self._key = key
        return self._copy
