"""ONNX Runtime sessions for sfc_plugin graphs.

ONNX Runtime has no kernel for ``sfc::TopkWindowMatch``; a native
custom-op library would need ORT's C++ headers, which no package registry
ships. :func:`onnxruntime_session` therefore runs the node as an
onnxruntime-extensions Python op that calls
:func:`sfc_plugin.ops.topk_window_match` (the native CPU kernel). Such ops
live in onnxruntime-extensions' own domain, so the session gets a copy of
the graph with the nodes moved there; the file is left as exported.
"""
import os
from typing import Optional, Sequence, Union

import numpy as np
import onnx
import torch

from sfc_plugin.ops import topk_window_match
from sfc_plugin.ops.onnx import ATTRIBUTES, DOMAIN, OP_TYPE

_python_op_domain = None


def require_module(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError as e:
        raise ImportError(
            f'{module} is not installed; install sfc_plugin with the '
            f'`{extra}` extra (pip install "sfc_plugin[{extra}]")') from e


def _register_python_op() -> str:
    """Registers the Python ``TopkWindowMatch`` op once; returns its
    domain."""
    global _python_op_domain
    if _python_op_domain is not None:
        return _python_op_domain
    require_module('onnxruntime_extensions', 'ort')
    from onnxruntime_extensions import (
        PyCustomOpDef,
        default_opset_domain,
        onnx_op,
    )
    types = {int: PyCustomOpDef.dt_int64, float: PyCustomOpDef.dt_float,
             str: PyCustomOpDef.dt_string}

    @onnx_op(op_type=OP_TYPE,
             inputs=[PyCustomOpDef.dt_float] * 3,
             outputs=[PyCustomOpDef.dt_float],
             attrs={name: types[t] for name, t in ATTRIBUTES.items()})
    def topk_window_match_op(query, keys, key_labels, **attrs):
        out = topk_window_match(
            torch.from_numpy(np.ascontiguousarray(query)),
            torch.from_numpy(np.ascontiguousarray(keys)),
            torch.from_numpy(np.ascontiguousarray(key_labels)),
            topk=attrs['topk'], radius=attrs['radius'],
            temperature=attrs['temperature'],
            unrestricted_keys=attrs['unrestricted_keys'])
        return out.numpy()

    _python_op_domain = default_opset_domain()
    return _python_op_domain


#: ONNX Runtime's element type names and the torch dtypes they carry.
ORT_DTYPES = {'tensor(float)': torch.float32, 'tensor(float16)': torch.float16,
              'tensor(double)': torch.float64,
              'tensor(bfloat16)': torch.bfloat16}


def session_input_dtype(session, index: int = 0) -> torch.dtype:
    """The torch dtype a session's input takes (its precision is the
    exported model's).

    Raises:
        ValueError: An element type that is not a floating point one.
    """
    arg = session.get_inputs()[index]
    if arg.type not in ORT_DTYPES:
        raise ValueError(f'ONNX input "{arg.name}" takes {arg.type}; '
                         'sfc_plugin models take floating point images')
    return ORT_DTYPES[arg.type]


def has_custom_nodes(model: onnx.ModelProto) -> bool:
    """Whether the graph contains ``sfc::TopkWindowMatch``."""
    return any(n.domain == DOMAIN and n.op_type == OP_TYPE
               for n in model.graph.node)


def load_onnx(path: Union[str, os.PathLike]) -> onnx.ModelProto:
    """An ONNX file's model, with errors that name the file.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file is not an ONNX model.
    """
    path = os.fspath(path)
    try:
        return onnx.load(path)
    except FileNotFoundError:
        raise FileNotFoundError(f'ONNX file not found: "{path}"') from None
    except Exception as err:  # protobuf's DecodeError and kin
        raise ValueError(f'"{path}" is not an ONNX model (cannot be parsed: '
                         f'{type(err).__name__}: {err})') from None


def onnxruntime_session(model: Union[str, os.PathLike, onnx.ModelProto],
                        providers: Optional[Sequence[str]] = None,
                        sess_options=None):
    """An ``onnxruntime.InferenceSession`` for ``model``, able to run
    ``sfc::TopkWindowMatch`` nodes.

    Args:
        model (str | ModelProto): ONNX file or loaded model.
        providers (Sequence[str], optional): Execution providers; the CPU
            provider by default.
        sess_options (SessionOptions, optional): Session options.

    Returns:
        onnxruntime.InferenceSession

    Raises:
        ValueError: ``model`` is not an ONNX file (naming it).
    """
    ort = require_module('onnxruntime', 'ort')
    proto = model if isinstance(model, onnx.ModelProto) else load_onnx(model)
    options = sess_options or ort.SessionOptions()
    providers = list(providers or ['CPUExecutionProvider'])
    if not has_custom_nodes(proto):
        return ort.InferenceSession(proto.SerializeToString(), options,
                                    providers=providers)
    domain = _register_python_op()
    from onnxruntime_extensions import get_library_path
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    for node in proto.graph.node:
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            node.domain = domain
    if not any(o.domain == domain for o in proto.opset_import):
        proto.opset_import.add(domain=domain, version=1)
    options.register_custom_ops_library(get_library_path())
    return ort.InferenceSession(proto.SerializeToString(), options,
                                providers=providers)
