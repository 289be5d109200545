"""A label-propagation step as an exportable module, and its ONNX export."""
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from sfc_plugin.ops import topk_window_match, topk_window_match_decomposed
from sfc_plugin.ops.onnx import register_onnx_symbolic
from sfc_plugin.utils.fileio import atomic_output, sha256

from .onnx_export import MIN_OPSET, export_onnx, settle_report

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
    if step.form == 'custom':
        register_onnx_symbolic(opset)
    inputs = tuple(inputs) if inputs is not None else example_inputs()
    with atomic_output(path) as tmp:
        export_onnx(step, inputs, tmp, INPUT_NAMES, OUTPUT_NAMES,
                    DYNAMIC_AXES if dynamic else None, opset)
    return path


def step_from_config(cfg, form: str) -> PropagationStep:
    """The step with the settings of a tracker config's propagator."""
    from sfc_plugin.registry import MODELS
    prop = MODELS.build(cfg.model.get('propagator',
                                      dict(type='LabelPropagator')))
    return PropagationStep(prop.topk, prop.radius, prop.temperature,
                           0 if prop.restrict_first_frame else 1, form=form)


def export_checked_step(cfg,
                        encoder_onnx: str,
                        out: str,
                        form: str,
                        frames: Sequence[str],
                        num_frames: int = 2,
                        size: Optional[Tuple[int, int]] = None,
                        opset: int = MIN_OPSET,
                        atol: float = 1e-4) -> Dict:
    """Exports the config's propagation step and checks it in ONNX Runtime
    against the torch op, on features of real frames from the exported
    encoder (key frames: the frames; query: the last one; labels: random
    soft maps). ``out`` and its JSON report appear only if they agree.
    """
    from .encoder_export import load_frames
    from .onnxruntime_ops import onnxruntime_session
    images, files = load_frames(frames, num_frames, size)
    encoder = onnxruntime_session(encoder_onnx)
    feats = torch.from_numpy(encoder.run(
        None, {encoder.get_inputs()[0].name: images.numpy()})[0]).float()
    gen = torch.Generator().manual_seed(0)
    labels = torch.softmax(
        torch.randn(1, feats.shape[0], 3, *feats.shape[-2:], generator=gen),
        dim=2)
    inputs = (feats[-1:], feats[None], labels)
    step = step_from_config(cfg, form)
    stem = out[:-len('.onnx')]
    with atomic_output(out) as tmp:
        export_propagation_step(step, tmp, inputs=inputs, opset=opset)
        got = onnxruntime_session(tmp).run(
            None, dict(zip(INPUT_NAMES, [x.numpy() for x in inputs])))[0]
        expected = topk_window_match(
            *inputs, topk=step.topk, radius=step.radius,
            temperature=step.temperature,
            unrestricted_keys=step.unrestricted_keys)
        diff = (torch.from_numpy(got) - expected).abs()
        report = dict(step=repr(step), form=form, frames=files,
                      encoder=encoder_onnx, opset=opset, atol=atol,
                      input_shapes=[list(x.shape) for x in inputs],
                      max_abs_diff=diff.max().item(),
                      mean_abs_diff=diff.mean().item(),
                      passed=diff.max().item() <= atol,
                      onnx=dict(path=out, sha256=sha256(tmp)))
        settle_report(
            report, stem,
            f'{form} propagation step: ONNX Runtime disagrees with the torch '
            f'op, max abs diff {report["max_abs_diff"]:.3g} > {atol:g}')
    return report
