"""A label-propagation step as an exportable module, and its ONNX export."""
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from sfc_plugin.ops import (
    check_decomposed_memory,
    check_integer,
    check_match_settings,
    topk_window_match,
    topk_window_match_decomposed,
)
from sfc_plugin.ops.onnx import register_onnx_symbolic
from sfc_plugin.utils.fileio import atomic_output, sha256

from .onnx_export import (
    MIN_OPSET,
    export_onnx,
    publish_report,
    settle_report,
    written_opset,
)

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

    Precision is a property of the exported graph: its inputs and output
    are in the dtype of the example inputs it is exported with (float16
    for an fp16 encoder's features, halving the 1 + m key frames held),
    while the matching itself always runs in float32: the custom node is
    float32 (as its ONNX Runtime and CPU kernels are), and the top-k and
    softmax of the decomposition are exact in float32 only. Cast nodes
    convert at the step's boundary.

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
        self.topk, self.radius, self.temperature = check_match_settings(
            'PropagationStep', topk, radius, temperature)
        self.unrestricted_keys = check_integer('PropagationStep',
                                               'unrestricted_keys',
                                               unrestricted_keys)
        if self.unrestricted_keys < 0:
            raise ValueError('PropagationStep: unrestricted_keys must be >= '
                             f'0, got {self.unrestricted_keys}')
        self.form = form

    def forward(self, query: torch.Tensor, keys: torch.Tensor,
                key_labels: torch.Tensor) -> torch.Tensor:
        io_dtype = key_labels.dtype
        query, keys, key_labels = (x.float()
                                   for x in (query, keys, key_labels))
        if self.form == 'decomposed':
            out = topk_window_match_decomposed(
                query, keys, key_labels, topk=self.topk, radius=self.radius,
                temperature=self.temperature,
                unrestricted_keys=self.unrestricted_keys)
        else:
            out = torch.ops.sfc.topk_window_match(query, keys, key_labels,
                                                  self.topk, self.radius,
                                                  self.temperature,
                                                  self.unrestricted_keys)
        return out.to(io_dtype)

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
        # The custom node comes from a TorchScript symbolic; the
        # decomposition's k = min(topk, T·H·W), computed in the graph from
        # the inputs' shapes, is traced by TorchScript too.
        export_onnx(step, inputs, tmp, INPUT_NAMES, OUTPUT_NAMES,
                    DYNAMIC_AXES if dynamic else None, opset,
                    exporter='torchscript')
    return path


def step_from_config(cfg, form: str) -> PropagationStep:
    """The step with the settings of a tracker config's propagator."""
    from sfc_plugin.registry import MODELS
    from sfc_plugin.utils.config import build_from_config
    prop = build_from_config(
        MODELS, cfg.model.get('propagator', dict(type='LabelPropagator')),
        'model.propagator')
    return PropagationStep(prop.topk, prop.radius, prop.temperature,
                           0 if prop.restrict_first_frame else 1, form=form)


def near_tie_positions(step: PropagationStep, inputs: Sequence[torch.Tensor],
                       tie_gap: float) -> torch.Tensor:
    """(B, H, W) mask of the query positions whose k-th and (k+1)-th
    largest eligible affinities differ by less than ``tie_gap``, computed
    in float64."""
    from sfc_plugin.ops import topk_window_neighbours
    query, keys = (x.double() for x in inputs[:2])
    num_keys = keys.shape[1] * keys.shape[-2] * keys.shape[-1]
    k = step.topk
    if k >= num_keys:
        return torch.zeros(query.shape[0], *query.shape[-2:], dtype=torch.bool)
    weights, _ = topk_window_neighbours(
        query, keys, topk=k + 1, radius=step.radius,
        temperature=step.temperature,
        unrestricted_keys=step.unrestricted_keys)
    # Softmax weights' ratio gives the affinities' gap: w_i / w_j =
    # exp((a_i - a_j) / temperature).
    kth, next_ = weights[..., k - 1], weights[..., k]
    gap = step.temperature * torch.log(kth / next_.clamp_min(1e-300))
    return (next_ > 0) & (gap < tie_gap)


def export_checked_step(step: PropagationStep,
                        encoder_onnx: str,
                        out: str,
                        frames: Sequence[str],
                        num_frames: int = 2,
                        size: Optional[Tuple[int, int]] = None,
                        opset: int = MIN_OPSET,
                        atol: float = 1e-4,
                        tie_gap: float = 1e-5) -> Dict:
    """Exports ``step`` and checks it in ONNX Runtime against the torch op,
    on features of real frames from the exported encoder (key frames: the
    frames; query: the last one; labels: random soft maps). ``out`` and
    its JSON report appear only if they agree. The caller builds the step
    (:func:`step_from_config`) before it writes anything, so that bad
    propagator settings leave no files behind.

    The step takes the encoder's precision: an fp16 encoder's features give
    an fp16 step (see :class:`PropagationStep`), checked against the torch
    op on the same fp16 features with ``atol`` at least 1e-2.

    Positions whose k-th and (k+1)-th affinities lie within ``tie_gap``
    of each other (in float64) are left out of the comparison and counted
    in the report: there two implementations whose dot products round
    differently (a matrix product against the kernel's blocked sums) may
    pick different keys, which moves the soft labels by that key's
    weight. That is the definition's own discontinuity at ties, not an
    export error; every other position must agree within ``atol``.
    """
    from .encoder_export import load_frames
    from .onnxruntime_ops import onnxruntime_session, session_input_dtype
    images, files = load_frames(frames, num_frames, size)
    encoder = onnxruntime_session(encoder_onnx)
    dtype = session_input_dtype(encoder)
    feats = torch.from_numpy(encoder.run(
        None, {encoder.get_inputs()[0].name: images.to(dtype).numpy()})[0])
    if dtype != torch.float32:
        atol = max(atol, 1e-2)
    gen = torch.Generator().manual_seed(0)
    labels = torch.softmax(
        torch.randn(1, feats.shape[0], 3, *feats.shape[-2:], generator=gen),
        dim=2).to(feats.dtype)
    inputs = (feats[-1:], feats[None], labels)
    form = step.form
    if form == 'decomposed':
        # ONNX Runtime runs the graph on these inputs: the dense affinity of
        # large frames (--size 2048 2048 took 17 GB) is refused first.
        check_decomposed_memory('export: the decomposed propagation step',
                                1, feats.shape[0], *feats.shape[-2:],
                                feats.element_size(), 'onnxruntime')
    with atomic_output(out) as tmp:
        export_propagation_step(step, tmp, inputs=inputs, opset=opset)
        got = onnxruntime_session(tmp).run(
            None, dict(zip(INPUT_NAMES, [x.numpy() for x in inputs])))[0]
        expected = topk_window_match(
            *(x.float() for x in inputs), topk=step.topk, radius=step.radius,
            temperature=step.temperature,
            unrestricted_keys=step.unrestricted_keys)
        diff = (torch.from_numpy(got).float() - expected).abs()
        ambiguous = near_tie_positions(step, inputs, tie_gap)
        decided = diff.masked_fill(ambiguous[:, None], 0).max().item()
        report = dict(step=repr(step), form=form, frames=files,
                      precision='fp16' if dtype == torch.float16 else 'fp32',
                      encoder=encoder_onnx, opset=written_opset(tmp),
                      atol=atol,
                      input_shapes=[list(x.shape) for x in inputs],
                      max_abs_diff=diff.max().item(),
                      mean_abs_diff=diff.mean().item(),
                      tie_gap=tie_gap,
                      near_tie_positions=int(ambiguous.sum()),
                      positions=ambiguous.numel(),
                      max_abs_diff_outside_ties=decided,
                      passed=decided <= atol,
                      onnx=dict(path=out, sha256=sha256(tmp)))
        settle_report(
            report, out,
            f'{form} propagation step: ONNX Runtime disagrees with the torch '
            f'op, max abs diff {decided:.3g} > {atol:g} away from '
            'near-ties')
    publish_report(report, out)
    return report
