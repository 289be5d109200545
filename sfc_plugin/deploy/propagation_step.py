"""A label-propagation step as an exportable module, and its ONNX export."""
import os
import os.path as osp
import tempfile
import warnings
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from sfc_plugin.ops import topk_window_match_decomposed
from sfc_plugin.ops.onnx import MIN_OPSET, register_onnx_symbolic

FORMS = ('custom', 'decomposed')
INPUT_NAMES = ('query', 'keys', 'key_labels')
OUTPUT_NAMES = ('labels', )
DYNAMIC_AXES = dict(
    query={0: 'batch', 2: 'height', 3: 'width'},
    keys={0: 'batch', 1: 'frames', 3: 'height', 4: 'width'},
    key_labels={0: 'batch', 1: 'frames', 2: 'labels', 3: 'height',
                4: 'width'},
    labels={0: 'batch', 1: 'labels', 2: 'height', 3: 'width'})


class PropagationStep(nn.Module):
    """One :func:`~sfc_plugin.ops.topk_window_match` call with fixed
    settings: (query (B, C, H, W), keys (B, T, C, H, W), key_labels
    (B, T, K, H, W)) -> labels (B, K, H, W).

    Args:
        topk (int): Neighbours per query position.
        radius (float): Window radius of the restricted key frames.
        temperature (float): Softmax temperature.
        unrestricted_keys (int): Leading key frames matched everywhere.
            Defaults to 1.
        form (str): ``'custom'``: the ``sfc::topk_window_match`` op, which
            exports as one ``sfc::TopkWindowMatch`` node; ``'decomposed'``:
            standard operators only. Defaults to ``'custom'``.
    """

    def __init__(self,
                 topk: int,
                 radius: float,
                 temperature: float,
                 unrestricted_keys: int = 1,
                 form: str = 'custom'):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f'PropagationStep: form must be one of {FORMS}, '
                             f'got {form!r}')
        self.topk = int(topk)
        self.radius = float(radius)
        self.temperature = float(temperature)
        self.unrestricted_keys = int(unrestricted_keys)
        self.form = form

    def forward(self, query: torch.Tensor, keys: torch.Tensor,
                key_labels: torch.Tensor) -> torch.Tensor:
        if self.form == 'decomposed':
            return topk_window_match_decomposed(
                query, keys, key_labels, topk=self.topk, radius=self.radius,
                temperature=self.temperature,
                unrestricted_keys=self.unrestricted_keys)
        return torch.ops.sfc.topk_window_match(query, keys, key_labels,
                                               self.topk, self.radius,
                                               self.temperature,
                                               self.unrestricted_keys)

    def extra_repr(self) -> str:
        return (f'topk={self.topk}, radius={self.radius}, '
                f'temperature={self.temperature}, '
                f'unrestricted_keys={self.unrestricted_keys}, '
                f'form={self.form!r}')


def example_inputs(channels: int = 8,
                   size: Tuple[int, int] = (6, 7),
                   frames: int = 3,
                   num_labels: int = 2,
                   batch: int = 1,
                   dtype: torch.dtype = torch.float32
                   ) -> Tuple[torch.Tensor, ...]:
    """Random unit-norm features and soft labels with the step's shapes;
    the traced graph does not depend on their values."""
    h, w = size
    query = nn.functional.normalize(
        torch.randn(batch, channels, h, w, dtype=dtype), dim=1)
    keys = nn.functional.normalize(
        torch.randn(batch, frames, channels, h, w, dtype=dtype), dim=2)
    labels = torch.softmax(
        torch.randn(batch, frames, num_labels, h, w, dtype=dtype), dim=2)
    return query, keys, labels


def export_propagation_step(step: PropagationStep,
                            path: str,
                            inputs: Optional[Sequence[torch.Tensor]] = None,
                            opset: int = MIN_OPSET,
                            dynamic: bool = True) -> str:
    """Exports ``step`` to ONNX (batch, frames, labels, height and width
    dynamic unless ``dynamic=False``). The file appears only once complete.

    Args:
        step (PropagationStep): The step, in either form.
        path (str): Output ``.onnx`` file.
        inputs (Sequence[Tensor], optional): Example (query, keys,
            key_labels); :func:`example_inputs` by default. Their C is
            fixed in the graph.
        opset (int): ONNX opset, at least 17. Defaults to 17.
        dynamic (bool): Dynamic axes. Defaults to True.

    Returns:
        str: ``path``.
    """
    if opset < MIN_OPSET:
        raise ValueError(f'export_propagation_step: opset must be >= '
                         f'{MIN_OPSET}, got {opset}')
    if step.form == 'custom':
        register_onnx_symbolic(opset)
    inputs = tuple(inputs) if inputs is not None else example_inputs()
    out_dir = osp.dirname(osp.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.onnx.part', dir=out_dir)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of the dynamo
            # one, which needs onnxscript; both give the same nodes here.
            warnings.simplefilter('ignore')
            torch.onnx.export(step, inputs, tmp,
                              input_names=list(INPUT_NAMES),
                              output_names=list(OUTPUT_NAMES),
                              opset_version=opset,
                              dynamic_axes=DYNAMIC_AXES if dynamic else None,
                              dynamo=False)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return path
