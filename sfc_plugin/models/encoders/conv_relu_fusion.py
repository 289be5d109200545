"""A convolution, its residual sum and the ReLU after them as one library
call, for the encoders' inference copies (:mod:`.inference_copy`).

Eager PyTorch runs ``relu(conv(x) + residual)`` as three passes over the
activation, each written out and read back: on a 2-core CPU the SFC
encoder's (ResNet-50 + ResNet-18) 19 residual sums and 53 ReLUs took 21% of
its bf16 time at 480p, on an H200 the 58 bias additions, 56 ReLUs and 19
sums of the convolutions took 0.7 ms of a 7.6 ms frame in 133 launches.
oneDNN (the CPU) and cuDNN (CUDA) apply both in the convolution's epilogue,
on the float32 accumulator, rounding once.

On the CPU the fused calls are measured faster (BENCHMARKS.md). On CUDA they
are taken only with ``SFC_PLUGIN_CUDNN_FUSION=1`` until a GPU has timed
them: cuDNN's runtime-fused engines can be slower than its precompiled
convolutions followed by PyTorch's element-wise kernels.
"""
import functools
import logging
import operator
import os
from collections import Counter
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import fx, nn

from sfc_plugin.utils.cli import one_line

#: The types each library's fused convolution takes.
ONEDNN_DTYPES = (torch.float32, torch.bfloat16)
CUDNN_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: '1' lets CUDA tensors take cuDNN's fused convolutions; unset, empty or
#: '0' keeps the separate ops there (as the op's SFC_PLUGIN_* switches read).
CUDNN_FUSION_ENV = 'SFC_PLUGIN_CUDNN_FUSION'


def cudnn_fusion_asked() -> bool:
    """Whether :data:`CUDNN_FUSION_ENV` asks for cuDNN's fused calls; read
    at every call, so that a process (a benchmark) may switch it.

    Raises:
        ValueError: It is set to anything but 0 or 1.
    """
    value = os.environ.get(CUDNN_FUSION_ENV, '')
    if value not in ('', '0', '1'):
        raise ValueError(f'{CUDNN_FUSION_ENV} must be 0 or 1, got {value!r}')
    return value == '1'


def fusion_taken(device_type: str) -> bool:
    """Whether :class:`FusedConvReLU2d` takes a library's fused call for
    tensors of ``device_type``: on the CPU; on CUDA if
    :func:`cudnn_fusion_asked`. Elsewhere it would only add a call."""
    return device_type == 'cpu' or (device_type == 'cuda'
                                    and cudnn_fusion_asked())


class FusedConvReLU2d(nn.Module):
    """``relu(conv(x) + residual)``, or ``relu(conv(x))`` without a
    residual, in one call where the device's library fuses them.

    On the CPU oneDNN's post-ops (``mkldnn::_convolution_pointwise``), on
    CUDA cuDNN's fused convolution (``torch.cudnn_convolution_relu`` /
    ``cudnn_convolution_add_relu``) if ``SFC_PLUGIN_CUDNN_FUSION=1`` (not
    the default until timed on a GPU); elsewhere, with autograd, or for what
    the library does not take (float64, fp16 on the CPU, bf16 where the CPU
    has no bf16 path, a residual that would broadcast) the three separate
    ops, the reference. A cuDNN that finds no fused engine for a
    convolution raises on its first call: that convolution then keeps the
    separate ops, with one warning per process.

    The fused sum and ReLU round once, from the float32 accumulator, where
    the separate ops round the convolution, the sum and the ReLU each: in
    bf16 they differ by about one unit in the last place. And the fused
    ReLU maps NaN to 0, where ``torch.relu`` keeps it; a NaN can therefore
    vanish inside the encoder (:class:`ReducedPrecisionEncoder` refuses
    non-finite weights, so only a non-finite input brings one).

    Args:
        conv (nn.Conv2d): The convolution, zero-padded by numbers (not
            'same' / 'valid'); held as a submodule, weights shared.

    Shapes:
        x: (N, C_in, H, W). residual: the convolution's output shape.
        output: (N, C_out, H_out, W_out), in ``x``'s memory format.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not fusable_conv(conv):
            raise ValueError(
                'FusedConvReLU2d: needs an nn.Conv2d with zero padding given '
                f'by numbers, got {conv!r}')
        self.conv = conv
        #: The error that made cuDNN's fused call give way to the separate
        #: ops for this convolution, or None.
        self.cudnn_error: Optional[str] = None

    def forward(self, x: torch.Tensor,
                residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        fused = _FUSED_CALLS.get(x.device.type)
        if (fused is not None and self._library_takes(x, residual)):
            out = fused(self, x, residual)
            if out is not None:
                return out
        return self.reference(x, residual)

    def reference(self, x: torch.Tensor,
                  residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The separate ops: what the fused call computes."""
        out = self.conv(x)
        if residual is not None:
            out = out + residual
        return F.relu(out, inplace=True)

    def output_shape(self, x: torch.Tensor) -> torch.Size:
        """The convolution's output shape for input ``x``."""
        c = self.conv
        spatial = [(size + 2 * pad - dil * (k - 1) - 1) // stride + 1
                   for size, pad, dil, k, stride in zip(
                       x.shape[2:], c.padding, c.dilation, c.kernel_size,
                       c.stride)]
        return torch.Size([x.shape[0], c.out_channels, *spatial])

    def _library_takes(self, x: torch.Tensor,
                       residual: Optional[torch.Tensor]) -> bool:
        weight = self.conv.weight
        if x.dim() != 4 or x.dtype != weight.dtype:
            return False
        if torch.is_grad_enabled() and (x.requires_grad
                                        or weight.requires_grad
                                        or (residual is not None
                                            and residual.requires_grad)):
            return False  # the fused calls have no backward
        return residual is None or (residual.dtype == x.dtype
                                    and residual.device == x.device
                                    and residual.shape == self.output_shape(x))

    def extra_repr(self) -> str:
        return '' if self.cudnn_error is None else 'cuDNN: separate ops'


@functools.lru_cache(maxsize=None)
def _onednn_has_bf16() -> bool:
    # An operator call: asked once, not per convolution and frame.
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _onednn_call(module: FusedConvReLU2d, x: torch.Tensor,
                 residual: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if not (torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled and x.dtype in ONEDNN_DTYPES):
        return None
    if x.dtype == torch.bfloat16 and not _onednn_has_bf16():
        return None
    c = module.conv
    if residual is not None and not (c.groups == 1 and (
            _strictly_channels_last(x) or _strictly_channels_last(c.weight))):
        # The cases oneDNN does not fuse: its fallback's add_relu has no
        # bf16 kernel.
        return None
    # oneDNN's schema has the padding before the stride.
    geometry = (list(c.padding), list(c.stride), list(c.dilation), c.groups)
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(
            x, c.weight, c.bias, *geometry, 'relu', [], None)
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, residual, c.weight, c.bias, *geometry, 'add', None, 'relu', [],
        None)


def _strictly_channels_last(t: torch.Tensor) -> bool:
    """Channels-last and not also contiguous (as ATen's
    ``suggest_memory_format`` tells them apart)."""
    return (t.is_contiguous(memory_format=torch.channels_last)
            and not t.is_contiguous())


#: cuDNN errors already logged, so that a graph cuDNN cannot fuse warns
#: once, not once per convolution and frame.
_LOGGED_CUDNN_ERRORS = set()


def _cudnn_call(module: FusedConvReLU2d, x: torch.Tensor,
                residual: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if (module.cudnn_error is not None or x.dtype not in CUDNN_DTYPES
            or not cudnn_fusion_asked()
            or not (torch.backends.cudnn.is_available()
                    and torch.backends.cudnn.enabled)):
        return None
    c = module.conv
    geometry = (list(c.stride), list(c.padding), list(c.dilation), c.groups)
    try:
        if residual is None:
            return torch.cudnn_convolution_relu(x, c.weight, c.bias,
                                                *geometry)
        return torch.cudnn_convolution_add_relu(x, c.weight, residual, 1.0,
                                                c.bias, *geometry)
    except RuntimeError as err:
        # No fused engine for this convolution (its channels, its type,
        # the GPU): cuDNN says so before it launches anything.
        module.cudnn_error = one_line(err)
        if module.cudnn_error not in _LOGGED_CUDNN_ERRORS:
            _LOGGED_CUDNN_ERRORS.add(module.cudnn_error)
            print_log(
                'FusedConvReLU2d: cuDNN did not fuse a convolution '
                f'({module.conv}) with its ReLU ({module.cudnn_error}); it '
                'runs as separate ops', logger='current',
                level=logging.WARNING)
        return None


#: Device type -> the fused call: its result, or None where the library
#: does not take these tensors.
_FUSED_CALLS: Dict[str, Callable] = dict(cpu=_onednn_call, cuda=_cudnn_call)


def fusable_conv(module: nn.Module) -> bool:
    """Whether ``module`` is a plain ``nn.Conv2d`` (not a subclass, whose
    forward may differ) that the fused calls can run."""
    return (type(module) is nn.Conv2d and module.padding_mode == 'zeros'
            and not isinstance(module.padding, str))


def _is_relu(graph_module: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == 'call_module':
        return type(graph_module.get_submodule(node.target)) is nn.ReLU
    if node.op == 'call_function':
        return node.target in (torch.relu, torch.relu_, F.relu)
    return node.op == 'call_method' and node.target in ('relu', 'relu_')


def _is_plain_sum(node: fx.Node) -> bool:
    """``a + b`` of two nodes, without ``alpha`` or ``out``."""
    return (node.op == 'call_function'
            and node.target in (operator.add, operator.iadd, torch.add)
            and len(node.args) == 2 and not node.kwargs
            and all(isinstance(a, fx.Node) for a in node.args))


def fuse_conv_relu(graph_module: fx.GraphModule) -> int:
    """Rewrites ``graph_module`` in place: each ``relu(conv(x))`` and
    ``relu(conv(x) + y)`` whose convolution and sum feed nothing else
    becomes one :class:`FusedConvReLU2d` call, at the convolution's
    module path.

    Where both terms of a sum are convolutions (a ResNet block's last
    convolution and its downsampling), the first is fused.

    Args:
        graph_module (fx.GraphModule): A traced model, e.g. a backbone
            after :func:`torch.fx.experimental.optimization.fuse`.

    Returns:
        int: The convolutions fused.
    """
    graph = graph_module.graph
    calls = Counter(node.target for node in graph.nodes
                    if node.op == 'call_module')
    read = {node.target.rpartition('.')[0] for node in graph.nodes
            if node.op == 'get_attr'}

    def single_use_conv(node) -> bool:
        # The fused module takes the convolution's path: a module called
        # from two places (shared weights), or whose weights the graph reads,
        # stays as it is.
        return (node.op == 'call_module' and len(node.users) == 1
                and calls[node.target] == 1 and node.target not in read
                and len(node.args) == 1 and not node.kwargs
                and fusable_conv(graph_module.get_submodule(node.target)))

    fused = 0
    for relu in list(graph.nodes):
        if not _is_relu(graph_module, relu) or not relu.args:
            continue
        source = relu.args[0]
        if not isinstance(source, fx.Node):
            continue
        if single_use_conv(source):
            conv, residual, dead = source, None, [source]
        elif _is_plain_sum(source) and len(source.users) == 1:
            first, second = source.args
            if single_use_conv(first) and first is not second:
                conv, residual = first, second
            elif single_use_conv(second) and first is not second:
                conv, residual = second, first
            else:
                continue
            dead = [source, conv]
        else:
            continue
        target = conv.target
        graph_module.add_submodule(
            target, FusedConvReLU2d(graph_module.get_submodule(target)))
        # Before the ReLU, where the convolution's input and the residual
        # are both computed (the residual may come after the convolution).
        with graph.inserting_before(relu):
            node = graph.call_module(
                target, (conv.args[0], ) + (() if residual is None else
                                            (residual, )))
        relu.replace_all_uses_with(node)
        graph.erase_node(relu)
        for old in dead:
            graph.erase_node(old)
        fused += 1
    if fused:
        graph.lint()
        graph_module.recompile()
    return fused
