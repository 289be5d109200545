"""Feature backends: where a tracker's encoder runs.

Each backend maps normalised images (B, 3, H, W) to unit-norm features
(B, C, ⌈H/8⌉, ⌈W/8⌉) on the images' device, so the matching op that
follows runs where the features are:

- ``torch``: the tracker's own encoder (CPU or CUDA);
- ``onnxruntime``: an ONNX encoder from ``export/to_onnx.py``; on CUDA
  through IO binding, input and output staying in GPU memory, and on CPU
  through plain ``run``;
- ``tensorrt``: an engine from ``export/to_trt.py``.

Precision is the exported model's: each backend feeds its model's inputs in
the element type the session or engine declares (float16 for an fp16
export) and returns float32 features. Device is the tracker's: a backend
follows :meth:`FeatureBackend.to` (called when the tracker moves) or the
device of the images it is given: the CUDA provider's ``device_id``, the IO
binding and TensorRT's CUDA context all name that device (``cuda`` alone
means the current device, which launchers set to the local rank). A CUDA
device whose provider or engine cannot be had is an error, never a silent
fallback to the CPU.

Select one in a tracker config, ``model.backend=dict(type='onnxruntime',
model='sfc.onnx')``, or on the command line with ``--cfg-options``.
"""
import math
import os
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from sfc_plugin.registry import MODELS


def cuda_index(device: torch.device) -> int:
    """The CUDA device number of ``device`` (``cuda`` alone: the current
    device, which ``torch.cuda.set_device`` and the launchers set)."""
    return device.index if device.index is not None else \
        torch.cuda.current_device()


class FeatureBackend:
    """Base class: ``backend(images) -> features``.

    Subclasses bind their runtime to a device in :meth:`_bind`; the device
    is chosen by :meth:`to`, or on the first call by the images' device.
    """

    device: Optional[torch.device] = None

    def to(self, device: Union[str, torch.device]) -> 'FeatureBackend':
        """Runs the model on ``device`` from now on (rebinding only when it
        changes)."""
        device = torch.device(device)
        if device.type == 'cuda':
            if not torch.cuda.is_available():
                raise RuntimeError(f'{type(self).__name__}: device {device} '
                                   'asked for, but CUDA is not available')
            device = torch.device('cuda', cuda_index(device))
        if device != self.device:
            self._bind(device)
            self.device = device
        return self

    def _bind(self, device: torch.device) -> None:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@MODELS.register_module(name='onnxruntime')
class ONNXRuntimeBackend(FeatureBackend):
    """An ONNX encoder in ONNX Runtime.

    On a CUDA device the CUDA execution provider runs it with that
    ``device_id`` and IO binding into torch's tensors on that device; if
    the provider is missing or does not load there, that is an error (run
    on ``cpu``, or install ``onnxruntime-gpu``, the ``ort-gpu`` extra). On
    the CPU the CPU provider runs it.

    Args:
        model (str | PathLike): ONNX file written by ``export/to_onnx.py``.
        device (str, optional): Device to bind now; by default the device
            the tracker is moved to, or that of the first images.
        providers (Sequence, optional): Explicit ONNX Runtime provider list
            (names or ``(name, options)`` pairs), used as given; the first
            must load.

    Raises:
        FileNotFoundError, ValueError: No ONNX file, or not an encoder of
            sfc_plugin (checked when built).
    """

    def __init__(self,
                 model: str,
                 device: Optional[str] = None,
                 providers: Optional[Sequence] = None):
        import onnx

        from .onnxruntime_ops import ORT_DTYPES, load_onnx, require_module
        self.ort = require_module('onnxruntime', 'ort')
        self.model = os.fspath(model)
        proto = load_onnx(self.model)
        try:
            # Exporters do not always write the output's shape; the channel
            # count follows from the graph.
            graph = onnx.shape_inference.infer_shapes(proto).graph
        except Exception:  # custom nodes onnx cannot infer
            graph = proto.graph
        inputs = [i for i in graph.input
                  if i.name not in {t.name for t in graph.initializer}]
        if len(inputs) != 1 or not graph.output:
            raise ValueError(f'ONNXRuntimeBackend: {self.model} has '
                             f'{len(inputs)} inputs; not an sfc_plugin '
                             'encoder (one image input)?')
        dims = graph.output[0].type.tensor_type.shape.dim
        self.channels = dims[1].dim_value if len(dims) == 4 else 0
        if not self.channels:
            raise ValueError(f'ONNXRuntimeBackend: {self.model} does not fix '
                             'its feature channels (output dim 1); not an '
                             'sfc_plugin encoder?')
        elem = onnx.helper.tensor_dtype_to_np_dtype(
            inputs[0].type.tensor_type.elem_type)
        self.dtype = torch.from_numpy(np.zeros(0, elem)).dtype
        if self.dtype not in ORT_DTYPES.values():
            raise ValueError(f'ONNXRuntimeBackend: {self.model} takes '
                             f'{self.dtype} images; not an sfc_plugin '
                             'encoder?')
        self.providers = None if providers is None else list(providers)
        self.session = None
        if device is not None:
            self.to(device)

    def _providers(self, device: torch.device) -> list:
        if self.providers is not None:
            return self.providers
        if device.type == 'cpu':
            return ['CPUExecutionProvider']
        if device.type != 'cuda':
            raise ValueError('ONNXRuntimeBackend runs on cpu or cuda, not '
                             f'{device}')
        if 'CUDAExecutionProvider' not in self.ort.get_available_providers():
            raise RuntimeError(
                f'ONNXRuntimeBackend: {device} asked for, but the installed '
                'onnxruntime has no CUDA execution provider; install '
                'onnxruntime-gpu (the `ort-gpu` extra) or run on cpu')
        return [('CUDAExecutionProvider', {'device_id': device.index}),
                'CPUExecutionProvider']

    def _bind(self, device: torch.device) -> None:
        from .onnxruntime_ops import onnxruntime_session
        providers = self._providers(device)
        session = onnxruntime_session(self.model, providers=providers)
        wanted = providers[0] if isinstance(providers[0], str) else \
            providers[0][0]
        active = session.get_providers()
        if not active or active[0] != wanted:
            raise RuntimeError(
                f'ONNXRuntimeBackend: {wanted} did not load for {device} '
                f'(active providers: {active}); check that onnxruntime-gpu '
                'matches the installed CUDA and cuDNN, or run on cpu')
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name

    def binding(self, images: torch.Tensor,
                out: torch.Tensor):
        """IO binding of ``images`` and ``out`` (CUDA tensors on the bound
        device), naming that device for ONNX Runtime."""
        np_dtype = torch.empty(0, dtype=self.dtype).numpy().dtype
        binding = self.session.io_binding()
        index = self.device.index
        binding.bind_input(self.input_name, 'cuda', index, np_dtype,
                           tuple(images.shape), images.data_ptr())
        binding.bind_output(self.output_name, 'cuda', index, np_dtype,
                            tuple(out.shape), out.data_ptr())
        return binding

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.session is None or images.device != self.device:
            self.to(images.device)
        images = images.to(self.dtype).contiguous()
        if self.device.type != 'cuda':
            out = self.session.run([self.output_name],
                                   {self.input_name: images.numpy()})[0]
            return torch.from_numpy(out).float()
        b, _, h, w = images.shape
        out = torch.empty((b, self.channels, math.ceil(h / 8),
                           math.ceil(w / 8)), dtype=self.dtype,
                          device=self.device)
        binding = self.binding(images, out)
        # ONNX Runtime runs on its own stream: torch's work on the inputs
        # must be done first.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return out.float()


def torch_dtype(trt, trt_dtype) -> torch.dtype:
    """The torch dtype of a TensorRT tensor type."""
    return torch.from_numpy(np.zeros(0, trt.nptype(trt_dtype))).dtype


def require_tensorrt(who: str = 'TensorRTBackend'):
    """The ``tensorrt`` module, of a version this code supports.

    Args:
        who (str): What needs it, the start of the message.

    Raises:
        ImportError: Not installed, or outside [10.7, 12).
    """
    try:
        import tensorrt as trt
    except ImportError:
        raise ImportError(f'{who} needs TensorRT 10.7 to 11.x, and TensorRT '
                          'is not installed (the `tensorrt` extra, from '
                          'NVIDIA\'s index)') from None
    major, minor = (int(x) for x in trt.__version__.split('.')[:2])
    if (major, minor) < (10, 7) or major >= 12:
        raise ImportError(f'{who} needs TensorRT 10.7 to 11.x; TensorRT '
                          f'{trt.__version__} is installed')
    return trt


@MODELS.register_module(name='tensorrt')
class TensorRTBackend(FeatureBackend):
    """A TensorRT engine built by ``export/to_trt.py``.

    The engine is deserialised, and runs, on the tracker's CUDA device.
    Inputs are fed in the element types the engine declares (its precision
    is the ONNX model's) and checked against its optimisation profile
    before it runs; every TensorRT call's result is checked.

    Args:
        engine (str | bytes): ``trt_engines/<name>.engine``, or the
            serialised engine itself.
        device (str, optional): CUDA device; by default the tracker's, or
            that of the first inputs.
    """

    def __init__(self, engine: Union[str, bytes],
                 device: Optional[str] = None):
        self.trt = require_tensorrt()
        if not torch.cuda.is_available():
            raise RuntimeError('TensorRTBackend needs a CUDA GPU')
        from .tensorrt_plugin import register_tensorrt_plugin
        register_tensorrt_plugin()
        if isinstance(engine, bytes):
            self.source, self.serialized = 'the given bytes', engine
        else:
            self.source = f'"{os.fspath(engine)}"'
            with open(engine, 'rb') as f:
                self.serialized = f.read()
        self.engine = self.context = None
        self.to(device or 'cuda')

    def _bind(self, device: torch.device) -> None:
        if device.type != 'cuda':
            raise ValueError(f'TensorRTBackend runs on CUDA devices, not '
                             f'{device}')
        trt = self.trt
        # TensorRT's CUDA context is the current device's: the engine and
        # its execution context must be made on the tracker's device.
        with torch.cuda.device(device):
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            engine = runtime.deserialize_cuda_engine(self.serialized)
            if engine is None:
                raise RuntimeError(f'TensorRTBackend: cannot load '
                                   f'{self.source} (built by another '
                                   'TensorRT or for another GPU?)')
            context = engine.create_execution_context()
            if context is None:
                raise RuntimeError('TensorRTBackend: cannot create an '
                                   f'execution context for {self.source} '
                                   f'on {device}')
        self.runtime, self.engine, self.context = runtime, engine, context
        names = [engine.get_tensor_name(i)
                 for i in range(engine.num_io_tensors)]
        self.outputs = [n for n in names
                        if engine.get_tensor_mode(n) ==
                        trt.TensorIOMode.OUTPUT]
        self.inputs = [n for n in names if n not in self.outputs]
        self.input_name = self.inputs[0]
        self.dtypes = {n: torch_dtype(trt, engine.get_tensor_dtype(n))
                       for n in names}

    def profile(self, name: str) -> Tuple[Tuple[int, ...], ...]:
        """(min, opt, max) shapes of input ``name`` in profile 0."""
        return tuple(tuple(s) for s in
                     self.engine.get_tensor_profile_shape(name, 0))

    def check_shape(self, name: str, shape: Tuple[int, ...]) -> None:
        """Refuses a shape outside the engine's profile, naming both.

        Raises:
            ValueError: With the shape, the profile's range and how to
                build an engine that takes it.
        """
        low, _, high = self.profile(name)
        if len(shape) != len(low) or any(
                not lo <= s <= hi for s, lo, hi in zip(shape, low, high)):
            raise ValueError(
                f'TensorRTBackend: input "{name}" of shape {tuple(shape)} is '
                f'outside the profile of {self.source}: min {low}, max '
                f'{high}; rebuild it with export/to_trt.py --shape '
                f'{name}=MIN:OPT:MAX covering this size')

    def run(self, feeds: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Runs the engine on named inputs; returns its named outputs (on
        the engine's device, after the current stream has run them).

        Raises:
            ValueError: An unknown input or a shape outside the profile.
            RuntimeError: TensorRT refused a call.
        """
        device = self.device
        unknown = set(feeds) - set(self.inputs)
        if unknown:
            raise ValueError(f'TensorRTBackend: {self.source} has no input '
                             f'{sorted(unknown)} (inputs: {self.inputs})')
        buffers = {}
        for name, value in feeds.items():
            self.check_shape(name, tuple(value.shape))
            buffers[name] = value.to(device, self.dtypes[name]).contiguous()
            if not self.context.set_input_shape(name, tuple(value.shape)):
                raise RuntimeError(f'TensorRTBackend: TensorRT refused input '
                                   f'shape {tuple(value.shape)} for "{name}"')
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f'TensorRTBackend: output "{name}" has '
                                   f'unresolved shape {shape}; are all '
                                   'inputs given?')
            buffers[name] = torch.empty(shape, dtype=self.dtypes[name],
                                        device=device)
        for name, buffer in buffers.items():
            if not self.context.set_tensor_address(name, buffer.data_ptr()):
                raise RuntimeError('TensorRTBackend: TensorRT refused the '
                                   f'address of "{name}"')
        stream = torch.cuda.current_stream(device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f'TensorRTBackend: {self.source} failed to '
                               'run (see TensorRT\'s log)')
        return {name: buffers[name] for name in self.outputs}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.device != self.device:
            self.to(images.device)
        outputs = self.run({self.input_name: images})
        return outputs[self.outputs[0]].float()
