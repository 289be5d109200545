"""Feature backends: where a tracker's encoder runs.

Each backend maps normalised images (B, 3, H, W) to unit-norm features
(B, C, ⌈H/8⌉, ⌈W/8⌉) on the images' device, so the matching op that
follows runs where the features are:

- ``torch``: the tracker's own encoder (CPU or CUDA);
- ``onnxruntime``: an ONNX encoder from ``export/to_onnx.py``; on CUDA
  through IO binding, input and output staying in GPU memory, and on CPU
  (or as a fallback, with one warning) through plain ``run``;
- ``tensorrt``: an engine from ``export/to_trt.py``.

Select one in a tracker config, ``model.backend=dict(type='onnxruntime',
model='sfc.onnx')``, or on the command line with ``--cfg-options``.
"""
import math
import warnings
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch

from sfc_plugin.registry import MODELS


class FeatureBackend:
    """Base class: ``backend(images) -> features``."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@MODELS.register_module(name='onnxruntime')
class ONNXRuntimeBackend(FeatureBackend):
    """An ONNX encoder in ONNX Runtime.

    Args:
        model (str): ONNX file written by ``export/to_onnx.py``.
        device (str): ``'cuda'`` (CUDA execution provider, IO binding) or
            ``'cpu'``. Defaults to ``'cuda'`` when torch sees a GPU.
        providers (Sequence[str], optional): Explicit provider list.
    """

    def __init__(self,
                 model: str,
                 device: Optional[str] = None,
                 providers: Optional[Sequence[str]] = None):
        from .onnxruntime_ops import onnxruntime_session, require_module
        ort = require_module('onnxruntime', 'ort')
        device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
        if providers is None:
            providers = ['CPUExecutionProvider']
            if device == 'cuda':
                if 'CUDAExecutionProvider' in ort.get_available_providers():
                    providers.insert(0, 'CUDAExecutionProvider')
                else:
                    warnings.warn(
                        f'ONNXRuntimeBackend: {model} runs on ONNX Runtime\'s '
                        'CPU provider: the installed onnxruntime has no CUDA '
                        'provider (install onnxruntime-gpu, the `ort-gpu` '
                        'extra)')
                    device = 'cpu'
        self.session = onnxruntime_session(model, providers=providers)
        self.device = torch.device(device)
        self.input_name = self.session.get_inputs()[0].name
        output = self.session.get_outputs()[0]
        self.output_name = output.name
        self.channels = output.shape[1]
        if not isinstance(self.channels, int):
            raise ValueError(f'ONNXRuntimeBackend: {model} does not fix its '
                             'feature channels (output dim 1); not an '
                             'sfc_plugin encoder?')
        self.dtype = (torch.float16 if self.session.get_inputs()[0].type ==
                      'tensor(float16)' else torch.float32)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, self.dtype).contiguous()
        if self.device.type != 'cuda':
            out = self.session.run([self.output_name],
                                   {self.input_name: images.numpy()})[0]
            return torch.from_numpy(out).float()
        b, _, h, w = images.shape
        out = torch.empty((b, self.channels, math.ceil(h / 8),
                           math.ceil(w / 8)), dtype=self.dtype,
                          device=self.device)
        np_dtype = np.float16 if self.dtype == torch.float16 else np.float32
        binding = self.session.io_binding()
        index = self.device.index or 0
        binding.bind_input(self.input_name, 'cuda', index, np_dtype,
                           tuple(images.shape), images.data_ptr())
        binding.bind_output(self.output_name, 'cuda', index, np_dtype,
                            tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return out.float()


@MODELS.register_module(name='tensorrt')
class TensorRTBackend(FeatureBackend):
    """A TensorRT engine built by ``export/to_trt.py``.

    Args:
        engine (str | bytes): ``trt_engines/<name>.engine``, or the
            serialised engine itself.
    """

    def __init__(self, engine: Union[str, bytes]):
        try:
            import tensorrt as trt
        except ImportError:
            raise ImportError('TensorRTBackend needs TensorRT 10 (the '
                              '`tensorrt` extra, from NVIDIA\'s index)'
                              ) from None
        if not torch.cuda.is_available():
            raise RuntimeError('TensorRTBackend needs a CUDA GPU')
        from .tensorrt_plugin import register_tensorrt_plugin
        register_tensorrt_plugin()
        source = 'the given bytes' if isinstance(engine, bytes) else \
            f'"{engine}"'
        if not isinstance(engine, bytes):
            with open(engine, 'rb') as f:
                engine = f.read()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(engine)
        if self.engine is None:
            raise RuntimeError(f'TensorRTBackend: cannot load {source} '
                               '(built by another TensorRT or GPU?)')
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i)
                 for i in range(self.engine.num_io_tensors)]
        self.outputs = [
            n for n in names
            if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT
        ]
        self.input_name = next(n for n in names if n not in self.outputs)
        self.output_dtypes = {
            n: torch.from_numpy(np.zeros(0, trt.nptype(
                self.engine.get_tensor_dtype(n)))).dtype
            for n in self.outputs
        }

    def run(self, feeds: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Runs the engine on named inputs; returns its named outputs (on
        the GPU, after the current stream has run them)."""
        buffers = {}
        for name, value in feeds.items():
            buffers[name] = value.cuda().contiguous()
            self.context.set_input_shape(name, tuple(value.shape))
        for name in self.outputs:
            buffers[name] = torch.empty(
                tuple(self.context.get_tensor_shape(name)),
                dtype=self.output_dtypes[name], device='cuda')
        for name, buffer in buffers.items():
            self.context.set_tensor_address(name, buffer.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError('TensorRTBackend: execution failed')
        return {name: buffers[name] for name in self.outputs}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        outputs = self.run({self.input_name: images.float()})
        return outputs[self.outputs[0]].float()
