"""Encoders as reduced-precision tracking runs them: BatchNorms folded into
the convolutions, each convolution fused with the residual sum and ReLU
after it, weights cast once, the stem's max-pool without indices."""
import copy
import itertools
import logging
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import fx, nn
from torch.fx.experimental.optimization import fuse

from .conv_relu_fusion import fuse_conv_relu, fusion_taken
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
    for module in list(folded.modules()):  # backbones replaced on the way
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


class IndexFreeMaxPool2d(nn.Module):
    """ResNet's stem max-pool (3×3 windows, stride 2, padding 1) without
    an index tensor.

    On the CPU ``max_pool2d`` writes an int64 index per output even when
    none is asked for: at 480p 13 MB a frame, as large as the bf16
    activation it pools, which the allocator returns to the system after
    every frame and faults in again on the next. Element-wise maxima of
    strided views, columns then rows, give the same values (a max does not
    round, and NaN propagates as in ``max_pool2d``) and no index.

    Shapes:
        input: (N, C, H, W). output: (N, C, ⌈H/2⌉, ⌈W/2⌉), channels-last
        for a channels-last input.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return F.max_pool2d(x, 3, 2, 1)
        n, c, h, w = x.shape
        layout = (torch.channels_last
                  if x.is_contiguous(memory_format=torch.channels_last) else
                  torch.contiguous_format)
        # Output j covers inputs 2j - 1, 2j and 2j + 1 where they exist.
        cols = torch.empty((n, c, h, (w + 1) // 2), dtype=x.dtype,
                           device=x.device, memory_format=layout)
        _fold_neighbours(cols.copy_(x[..., 0::2]), x[..., 1::2], dim=3)
        out = torch.empty((n, c, (h + 1) // 2, cols.shape[3]),
                          dtype=x.dtype, device=x.device, memory_format=layout)
        return _fold_neighbours(out.copy_(cols[:, :, 0::2]),
                                cols[:, :, 1::2], dim=2)


def _fold_neighbours(even: torch.Tensor, odd: torch.Tensor,
                     dim: int) -> torch.Tensor:
    """``even`` (inputs 2j along ``dim``) maximised in place with inputs
    2j + 1 and 2j - 1 (``odd`` holds inputs 2j + 1)."""
    m = odd.shape[dim]
    head = even.narrow(dim, 0, m)
    torch.maximum(head, odd, out=head)
    tail = even.narrow(dim, 1, even.shape[dim] - 1)
    torch.maximum(tail, odd.narrow(dim, 0, tail.shape[dim]), out=tail)
    return even


def _without_pool_indices(module: nn.Module) -> nn.Module:
    """``module`` with each stem-like ``nn.MaxPool2d`` (3×3, stride 2,
    padding 1) replaced by :class:`IndexFreeMaxPool2d`, in place."""

    def pair(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    for name, child in list(module.named_modules()):
        if (type(child) is nn.MaxPool2d and pair(child.kernel_size) == (3, 3)
                and pair(child.stride) == (2, 2)
                and pair(child.padding) == (1, 1)
                and pair(child.dilation) == (1, 1) and not child.ceil_mode
                and not child.return_indices):
            parent, _, attr = name.rpartition('.')
            setattr(module.get_submodule(parent), attr, IndexFreeMaxPool2d())
    return module


def _weights(module: nn.Module) -> Iterator[torch.Tensor]:
    """Every parameter and buffer of ``module`` and of its submodules, by a
    plain walk over their dicts: ``parameters()`` and ``buffers()`` build a
    name and check a set for every tensor, four times the cost, and this
    runs at every frame."""
    stack = [module]
    while stack:
        current = stack.pop()
        for tensor in itertools.chain(current._parameters.values(),
                                      current._buffers.values()):
            if tensor is not None:
                yield tensor
        stack.extend(child for child in current._modules.values()
                     if child is not None)


class ReducedPrecisionEncoder:
    """An encoder's folded copy (:func:`fold_batch_norms`) in a reduced
    type, channels-last, its convolutions fused with the residual sums and
    ReLUs after them (:func:`fuse_conv_relu`), on the CPU with its stem
    max-pools without an index tensor (:class:`IndexFreeMaxPool2d`), remade
    whenever the encoder's weights change.

    Under autocast every call would cast each weight again and run each
    BatchNorm as a pass of its own; the copy does neither (the FC ResNet-18
    at 480p in bf16 on a 2-core CPU: 0.062 → 0.055 s). It holds the
    weights once more, in the reduced type (half their float32 size).

    A change is seen from each parameter's and buffer's storage, version
    counter (bumped by every in-place write: ``load_state_dict``, optimiser
    steps, running statistics), type and device, and from the module tree
    (a replaced submodule or parameter); the owner also calls
    :meth:`invalidate` when it is moved or cast.

    A weight that is not finite in the reduced type (a folded BatchNorm of
    tiny variance overflows fp16's 65504) is refused, naming it: the fused
    ReLUs would turn the NaNs it brings into zeros, features that look
    sound.

    Args:
        fuse_relus (bool): Whether to fuse the convolutions with their
            residual sums and ReLUs (:func:`fuse_conv_relu`) where a library
            call is taken for them (:func:`fusion_taken`: the CPU; CUDA with
            ``SFC_PLUGIN_CUDNN_FUSION=1``, read when the copy is made); the
            benchmarks compare both. Defaults to True.
    """

    def __init__(self, fuse_relus: bool = True):
        self.fuse_relus = fuse_relus
        self._key: Optional[Tuple] = None
        self._copy: Optional[nn.Module] = None

    def invalidate(self) -> None:
        """Drops the copy: the next call makes it again."""
        self._key = self._copy = None

    def __call__(self, encoder: nn.Module, dtype: torch.dtype) -> nn.Module:
        """The folded copy of ``encoder`` (in eval mode) in ``dtype``."""
        key = (dtype, ) + tuple((t.data_ptr(), t._version, t.dtype, t.device)
                                for t in _weights(encoder))
        if key != self._key:
            self.invalidate()  # the old copy goes before the new one comes
            folded = fold_batch_norms(encoder)
            # The index tensor is the CPU max_pool2d's: elsewhere one pool
            # kernel beats the element-wise passes.
            if all(t.device.type == 'cpu' for t in encoder.parameters()):
                folded = _without_pool_indices(folded)
            device = next(encoder.parameters(), torch.empty(0)).device
            if self.fuse_relus and fusion_taken(device.type):
                for module in folded.modules():
                    if (isinstance(module, CorrespondenceEncoder)
                            and isinstance(module.backbone, fx.GraphModule)):
                        fuse_conv_relu(module.backbone)
            cast = folded.to(dtype=dtype, memory_format=torch.channels_last)
            _check_finite(cast, dtype)
            self._copy = cast
            self._key = key
        return self._copy


def _check_finite(copy: nn.Module, dtype: torch.dtype) -> None:
    """Refuses a copy with a weight that is not finite, naming it."""
    weights = [(name, t) for name, t in itertools.chain(
        copy.named_parameters(), copy.named_buffers())
               if t.is_floating_point() and not t.is_meta]  # meta: no data
    if not weights:
        return
    # One host wait for all of them, not one per weight.
    finite = torch.stack([t.isfinite().all() for _, t in weights]).tolist()
    bad = [name for (name, _), ok in zip(weights, finite) if not ok]
    if bad:
        raise ValueError(
            f'ReducedPrecisionEncoder: {len(bad)} weight(s) of the encoder '
            f'are not finite in {dtype} (first: {bad[0]}); NaN or infinite '
            'weights in the checkpoint, or folded BatchNorms too large for '
            'fp16 (use bf16)')
