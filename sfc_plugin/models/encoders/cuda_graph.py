"""An encoder's forward pass replayed as a CUDA graph: one launch where
eager PyTorch dispatches every operator from Python."""
import logging
from types import ModuleType
from typing import Optional, Tuple

import torch
from mmengine.logging import print_log
from torch import nn

from sfc_plugin.utils.cli import one_line

#: Eager runs before the capture, on a side stream, as PyTorch's CUDA
#: graph documentation asks: cuDNN's algorithm search, lazy library
#: initialisation, and the fused convolutions' first calls (a convolution
#: cuDNN will not fuse is found out here, not inside the capture).
WARMUP_RUNS = 3


class CUDAGraphEncoder:
    """Runs an encoder in eval mode as a replayed CUDA graph, captured on
    its first call with an input of a new shape, type or device, and again
    when the encoder object is another one (a reduced-precision copy made
    again after its weights changed).

    Each call copies its input into the graph's static input, replays the
    graph on the current stream and returns a copy of the static output,
    so the result stays valid after the next call. Eager PyTorch dispatches
    each of the encoder's operators from Python (the SFC encoder: 58
    convolutions and their sums, ReLUs and normalisations, 5 to 40 µs of
    host time each): a frame in flight hides that only while the host keeps
    ahead of the GPU. The graph holds the activations of one forward pass
    for as long as it is kept (one graph at a time).

    The capture restricts only this thread (``capture_error_mode=
    'thread_local'``): the frame loader's pinned-memory allocations go on
    meanwhile. A capture that fails (an operator that waits for the host,
    a library call not allowed in a graph) leaves that encoder and input
    eager, with one warning; the result is the same either way, since the
    replay runs the kernels the capture recorded.

    A copy (``copy.deepcopy``, pickling: a tracker copied with its model)
    starts without a graph and captures its own.

    Args:
        cuda (module, optional): The CUDA API used; None for
            ``torch.cuda``. Defaults to None.
        device_type (str): Whose tensors are captured; others run eagerly.
            Defaults to 'cuda'. (Tests pass a fake API and 'cpu'.)

    Shapes:
        input: any one tensor the encoder takes; output: the encoder's.
    """

    def __init__(self, cuda: Optional[ModuleType] = None,
                 device_type: str = 'cuda'):
        self.cuda = torch.cuda if cuda is None else cuda
        self.device_type = device_type
        self._key: Optional[Tuple] = None
        self._encoder: Optional[nn.Module] = None
        self._graph = None
        self._static_input: Optional[torch.Tensor] = None
        self._static_output: Optional[torch.Tensor] = None
        #: The reason the last capture failed, or None.
        self.capture_error: Optional[str] = None

    def __getstate__(self) -> dict:
        # A graph, its memory and its encoder stay with this object.
        return dict(cuda=None if self.cuda is torch.cuda else self.cuda,
                    device_type=self.device_type)

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def reset(self) -> None:
        """Drops the graph and its memory: the next call captures again."""
        self._key = self._encoder = self._graph = None
        self._static_input = self._static_output = None
        self.capture_error = None

    def __call__(self, encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != self.device_type or encoder.training:
            return encoder(x)
        key = (id(encoder), tuple(x.shape), x.stride(), x.dtype, x.device)
        if key != self._key or self._encoder is not encoder:
            self.reset()
            self._key, self._encoder = key, encoder
            self._capture(encoder, x)
        if self._graph is None:  # the capture failed: eager
            return encoder(x)
        self._static_input.copy_(x)
        self._graph.replay()
        return self._static_output.clone()

    def _capture(self, encoder: nn.Module, x: torch.Tensor) -> None:
        cuda = self.cuda
        static_input = x.clone(memory_format=torch.preserve_format)
        side = cuda.Stream(device=x.device)
        side.wait_stream(cuda.current_stream(x.device))
        with cuda.stream(side), torch.no_grad():
            for _ in range(WARMUP_RUNS):
                encoder(static_input)
        cuda.current_stream(x.device).wait_stream(side)
        graph = cuda.CUDAGraph()
        try:
            with torch.no_grad(), cuda.graph(
                    graph, capture_error_mode='thread_local'):
                static_output = encoder(static_input)
        except Exception as err:  # any library's refusal to be captured
            self.capture_error = f'{type(err).__name__}: {one_line(err)}'
            print_log(
                'CUDAGraphEncoder: the encoder could not be captured as a '
                f'CUDA graph ({self.capture_error}); it runs eagerly',
                logger='current', level=logging.WARNING)
            return
        self._graph = graph
        self._static_input, self._static_output = static_input, static_output

