"""Encoders as reduced-precision tracking runs them: BatchNorms folded into
the convolutions, each convolution fused with the residual sum and ReLU
after it, weights cast once, the stem's max-pool without indices."""
import copy
import itertools
import logging
import operator
from typing import Optional

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import fx, nn
from torch.fx.experimental.optimization import fuse

from .checkpoint_loading import non_finite_weights
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


_DATA_PTR = operator.methodcaller('data_ptr')
_VERSION = operator.attrgetter('_version')


class _WeightsSnapshot:
    """A module tree's parameters and buffers as one walk found them, and a
    check that they are still the same, at C speed.

    A walk of the SFC encoder's 174 modules and a key of its 348 tensors'
    storage, version, type and device took 0.3-0.6 ms, at every frame.
    The check reads the same dicts through ``map`` and ``chain``: the same
    dict objects, the same submodules, parameters and buffers (by
    identity), and each tensor's storage and version counter (a tensor
    given another type or device, ``.data`` included, has other storage):
    0.2 ms. It passes when a new walk would find the same tensors,
    unwritten. The snapshot holds the tree's tensors until it is replaced.
    """

    def __init__(self, root: nn.Module):
        self.root = root
        modules, stack = [], [root]
        while stack:
            module = stack.pop()
            modules.append(module)
            stack.extend(child for child in module._modules.values()
                         if child is not None)
        self.modules = modules
        self.dicts = self._dicts()
        self.members = self._members()
        self.tensors = [t for t in self.members
                        if isinstance(t, torch.Tensor)]
        self.state = self._state()

    def _dicts(self) -> list:
        return [d for m in self.modules
                for d in (m._parameters, m._buffers, m._modules)]

    def _members(self) -> list:
        return list(itertools.chain.from_iterable(map(dict.values,
                                                      self.dicts)))

    def _state(self) -> tuple:
        tensors = self.tensors
        return list(map(_DATA_PTR, tensors)), list(map(_VERSION, tensors))

    def unchanged(self, root: nn.Module) -> bool:
        """Whether ``root`` is the module snapshotted, holding the same
        modules, parameters and buffers, none of them written since."""
        if root is not self.root:
            return False
        dicts = self._dicts()
        if not all(map(operator.is_, dicts, self.dicts)):
            return False  # a module's dict replaced
        members = self._members()
        return (len(members) == len(self.members)
                and all(map(operator.is_, members, self.members))
                and self._state() == self.state)


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

    A change is seen from each parameter's and buffer's storage (another
    type or device is other storage) and version counter (bumped by every
    in-place write: ``load_state_dict``, optimiser steps, running
    statistics), and from the module tree (a replaced submodule, parameter
    or buffer): :class:`_WeightsSnapshot`. The owner also calls
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
        self._dtype: Optional[torch.dtype] = None
        self._snapshot: Optional[_WeightsSnapshot] = None
        self._copy: Optional[nn.Module] = None

    def invalidate(self) -> None:
        """Drops the copy: the next call makes it again."""
        self._dtype = self._snapshot = self._copy = None

    def __call__(self, encoder: nn.Module, dtype: torch.dtype) -> nn.Module:
        """The folded copy of ``encoder`` (in eval mode) in ``dtype``."""
        if not (dtype == self._dtype and self._snapshot is not None
                and self._snapshot.unchanged(encoder)):
            self.invalidate()  # the old copy goes before the new one comes
            snapshot = _WeightsSnapshot(encoder)
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
            self._copy, self._snapshot, self._dtype = cast, snapshot, dtype
        return self._copy


def _check_finite(copy: nn.Module, dtype: torch.dtype) -> None:
    """Refuses a copy with a weight that is not finite, naming it."""
    bad = non_finite_weights(itertools.chain(copy.named_parameters(),
                                             copy.named_buffers()))
    if bad:
        raise ValueError(
            f'ReducedPrecisionEncoder: {len(bad)} weight(s) of the encoder '
            f'are not finite in {dtype} (first: {bad[0]}); NaN or infinite '
            'weights in the checkpoint, or folded BatchNorms too large for '
            'fp16 (use bf16)')
