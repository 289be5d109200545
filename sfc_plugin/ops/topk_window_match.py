"""Top-k windowed matching: the label-propagation step of the CRW protocol.

:func:`topk_window_match` is the public entry point. It runs the native
``sfc::topk_window_match`` op (C++ CPU kernel, CUDA kernel; see
:mod:`.extension`) where one serves the tensors' device, and the
pure-PyTorch reference otherwise. The module also holds the forms every
implementation is checked and timed against: the tiled reference, the
dense CRW-style baseline, and the standard-op decomposition that ONNX
exports.

Definition (every implementation): each query position takes the ``topk``
largest affinities (dot products of the features) over all eligible key
positions of all T key frames jointly, applies a softmax to them divided by
``temperature``, and returns the weighted sum of those keys' labels. The
first ``unrestricted_keys`` key frames are eligible everywhere; in the
others a key at offset (dy, dx) from the query is eligible iff
dy² + dx² < radius² (feature pixels). With fewer than ``topk`` eligible keys
all of them are used; a position with none (``radius=0`` and
``unrestricted_keys=0``) gets all-zero labels. Among equal affinities the
native kernels keep the key with the lower flat index t·H·W + y·W + x; the
PyTorch forms keep whichever ``torch.topk`` returns.

Edge cases, the same in every checked implementation: ``radius=inf`` (or
any radius >= H + W, which every offset in the frame is within) means no
window. A ``topk`` above the most keys a position can see
(:func:`most_eligible_keys`: every key of the unrestricted frames and a
window's worth of each other frame, at most T·H·W) gives the result of
``topk`` = that number in the match functions (the rest would be padding
of weight 0), and one above T·H·W is refused by the neighbours functions,
whose output has ``topk`` slots. On the host, a call whose top-k lists
would not fit in the memory left is refused with a ``MemoryError`` naming
``topk`` (:func:`~sfc_plugin.utils.memory.check_host_allocation`) instead
of being killed by the system.
An empty batch (B = 0) gives an empty result; C, H, W or K of 0 is refused,
and so are a ``topk`` or ``unrestricted_keys`` that is not an integer and
a non-finite temperature. Finite features whose dot products overflow the
dtype (the op expects unit-norm features) raise a ``ValueError`` saying so.

Feature types: float32 and float64 everywhere; on CUDA also float16 and
bfloat16 (float32 accumulation). On sm_80 and later the CUDA kernel matches
float16, bfloat16 and float32 features on tensor cores, float32 in 3xTF32, to
float32 accuracy; ``SFC_PLUGIN_TENSOR_CORES=0`` keeps them on CUDA cores
(:func:`cuda_kernel_config` names what runs). Reduced-precision features are
matched with float32 accumulation (on CPU, bfloat16 on its exact bf16 values)
and the softmax over the top-k runs in float32: on every device and in every
form the weights of the neighbours functions are float32 for float16 and
bfloat16 features (:func:`neighbour_weights_dtype`; in the feature type they
would carry errors of up to 0.2% into the labels), and the match functions'
labels come out in ``key_labels``' dtype (float32 labels give float32 labels).
The native CPU kernel scores bf16 with AVX512_BF16's ``vdpbf16ps`` where the
CPU has it (checked at run time, see :func:`cpu_bf16_kernel`); elsewhere it
widens the keys to float32 block by block and says so once with a warning.
``SFC_PLUGIN_DISABLE_BF16_DOT=1`` (read at every call) forces that float32
path. The pure-PyTorch forms widen bf16 CPU features to float32 up front: a
bf16 matmul would round every affinity to 8 significant bits.
"""
import functools
import math
import warnings
from typing import NamedTuple, Optional, Tuple, Union

import torch

from sfc_plugin.utils.memory import check_host_allocation
from sfc_plugin.utils.validation import check_integer, check_real

from .extension import native_ops_available, neighbour_weights_dtype

#: Affinity rows processed at once by the dense baseline are capped so that
#: one chunk of the (queries × keys) affinity stays near this many bytes.
CHUNK_BYTES = 128 * 2**20
#: The label aggregation sums the top-k slots in blocks that keep its
#: gathered (positions × slots × K) labels near this many bytes.
AGGREGATE_BYTES = 64 * 2**20
#: Host allocations of a call (its top-k lists) from this size on are
#: checked against the memory left: below it, a check per frame would cost
#: more than it could ever save.
HOST_CHECK_BYTES = 64 * 2**20
#: Query rows whose top-k lists each thread of the native CPU kernel holds
#: (``kRows`` in csrc/cpu), and the vector top-k's minimum of slots per
#: list (``kVectorTopK``): its working memory, for the check above.
_CPU_KERNEL_ROWS = 16
_CPU_KERNEL_MIN_SLOTS = 16
#: Smallest softmax temperature: affinities (at most 1 in magnitude for
#: unit-norm features) divided by less overflow float32, and 1e-40 once
#: made every weight NaN (blamed on the labels). The kernels' own check
#: (csrc: kMinTemperature) is the same.
MIN_TEMPERATURE = 1e-30
#: Largest topk: the op's schema and ONNX attributes hold an int64.
INT64_MAX = 2**63 - 1
#: Feature types the CPU implementations take.
CPU_FEATURE_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
#: Reasons for the float32 path of bf16 on CPU already warned about.
_bf16_notices = set()


def check_match_settings(owner: str, topk, radius,
                         temperature) -> Tuple[int, float, float]:
    """Validates the scalar settings of a match, for the op and for the
    objects that hold them (:class:`LabelPropagator`), so that a bad config
    fails where it is given, with the same rules.

    Args:
        owner (str): Who checks, the start of the messages.
        topk: An integer >= 1.
        radius: A real number >= 0; ``inf`` means no window.
        temperature: A finite real number >= :data:`MIN_TEMPERATURE`.

    Returns:
        tuple: ``topk`` (int), ``radius`` and ``temperature`` (float).
    """
    topk = check_integer(owner, 'topk', topk, low=1)
    check_integer(owner, 'topk', topk, high=INT64_MAX,
                  why=' (a 64-bit integer in the op and in ONNX)')
    radius = check_real(owner, 'radius', radius)
    if not radius >= 0:
        raise ValueError(
            f'{owner}: radius must be >= 0 (inf: no window), got {radius}')
    temperature = check_real(owner, 'temperature', temperature)
    if not (math.isfinite(temperature) and temperature >= MIN_TEMPERATURE):
        raise ValueError(
            f'{owner}: temperature must be a finite number >= '
            f'{MIN_TEMPERATURE:g} (smaller ones overflow the float32 '
            f'softmax), got {temperature}')
    return topk, radius, temperature


@functools.lru_cache(maxsize=64)
def _window_keys(height: int, width: int, radius: float) -> int:
    """Upper bound on the keys of one restricted H × W frame within the
    window of any one query position: per key row |dy| < H, the offsets
    with dx² < radius² - dy², at most W of them, at most H·W in all.
    Cached: the tracker asks for the same frame size at every frame."""
    radius = min(radius, float(height + width))
    count = 0
    for dy in range(-(height - 1), height):
        rest = radius * radius - dy * dy
        if rest > 0:
            # The largest dx with dx² < rest, as the kernels' tables have
            # it (window_half_widths in csrc).
            half = int(math.sqrt(rest))
            while half > 0 and half * half >= rest:
                half -= 1
            while (half + 1) * (half + 1) < rest:
                half += 1
            count += min(2 * half + 1, width)
    return min(count, height * width)


def most_eligible_keys(frames: int, height: int, width: int, radius: float,
                       unrestricted_keys: int) -> int:
    """An upper bound on the eligible keys of a query position (exact where
    the window fits in the frame): all H·W keys of each unrestricted frame,
    and a window's worth of each other frame.

    A match with ``topk`` above it has the result of ``topk`` = this bound,
    so the match functions clamp to it: padding slots cost memory (12
    bytes per position and slot) and nothing else.

    Args:
        frames (int): Key frames T.
        height, width (int): Feature map size.
        radius (float): Window radius (``inf``: no window).
        unrestricted_keys (int): Leading frames without a window, in
            [0, T].

    Returns:
        int: At most T·H·W.
    """
    restricted = frames - unrestricted_keys
    return (unrestricted_keys * height * width +
            restricted * _window_keys(height, width, radius))


def top_k_memory(batch: int, height: int, width: int, topk: int,
                 dtype: torch.dtype, native_cpu: bool) -> int:
    """Bytes of the top-k lists a call builds: its (B, H, W, topk) weights
    and int64 indices, plus, in the native CPU kernel, each thread's lists
    for a run of query rows.

    Args:
        batch, height, width (int): Query positions B·H·W.
        topk (int): Slots per position.
        dtype (torch.dtype): Feature type.
        native_cpu (bool): Whether the native CPU kernel runs the call.

    Returns:
        int: Bytes.
    """
    weight_bytes = neighbour_weights_dtype(dtype).itemsize
    total = batch * height * width * topk * (weight_bytes + 8)
    if native_cpu:
        # Scores are float32 but for float64 features.
        score_bytes = 8 if dtype == torch.float64 else 4
        lists = min(torch.get_num_threads(), batch * height) * min(
            _CPU_KERNEL_ROWS, height) * width
        total += lists * max(topk, _CPU_KERNEL_MIN_SLOTS) * (score_bytes + 8)
    return total


class _Args(NamedTuple):
    """Validated arguments: every implementation runs on these."""
    batched: bool
    topk: int
    radius: float
    temperature: float
    unrestricted_keys: int


def _check(query: torch.Tensor, keys: torch.Tensor,
           key_labels: Optional[torch.Tensor], topk, radius, temperature,
           unrestricted_keys) -> _Args:
    """Validates the arguments with messages naming them.

    ``key_labels`` is None for the neighbours functions: their output has
    ``topk`` slots per position, so a ``topk`` above the T·H·W keys is
    refused. The match functions clamp it to :func:`most_eligible_keys`
    instead (the extra slots would be padding of weight 0: same result, no
    huge allocation). On the host, top-k lists that the memory left cannot
    hold are refused before they are allocated.
    A radius above H + W is capped there: every offset in the frame
    already lies within it, and ``inf`` must not reach integer arithmetic.
    """
    for name, t in (('query', query), ('keys', keys),
                    ('key_labels', key_labels)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise ValueError(f'topk_window_match: {name} must be a tensor, '
                             f'got {type(t).__name__}')
    batched = query.dim() == 4
    if query.dim() not in (3, 4):
        raise ValueError('topk_window_match: query must be (C, H, W) or '
                         f'(B, C, H, W), got shape {tuple(query.shape)}')
    lead = 'B, ' if batched else ''
    if keys.dim() != query.dim() + 1:
        raise ValueError(f'topk_window_match: keys must be ({lead}T, C, H, '
                         f'W), got shape {tuple(keys.shape)}')
    if (keys.shape[-3:] != query.shape[-3:]
            or keys.shape[:-4] != query.shape[:-3]):
        raise ValueError(f'topk_window_match: keys {tuple(keys.shape)} do not '
                         f'match query {tuple(query.shape)} in {lead}C, H, W')
    if key_labels is not None:
        if key_labels.dim() != keys.dim():
            raise ValueError('topk_window_match: key_labels must be '
                             f'({lead}T, K, H, W), got shape '
                             f'{tuple(key_labels.shape)}')
        if (key_labels.shape[:-3] != keys.shape[:-3]
                or key_labels.shape[-2:] != keys.shape[-2:]):
            raise ValueError(
                f'topk_window_match: key_labels {tuple(key_labels.shape)} do '
                f'not match keys {tuple(keys.shape)} in {lead}T, H, W')
        if key_labels.shape[-3] < 1:
            raise ValueError('topk_window_match: key_labels have no label '
                             'channels (K = 0)')
        if not key_labels.is_floating_point():
            raise ValueError('topk_window_match: key_labels must be floating '
                             f'point, got {key_labels.dtype}')
    frames, channels, height, width = keys.shape[-4:]
    if frames < 1:
        raise ValueError('topk_window_match: need at least one key frame')
    for size, what in ((channels, 'channels (C = 0)'),
                       (height, 'rows (H = 0)'), (width, 'columns (W = 0)')):
        if size < 1:
            raise ValueError(f'topk_window_match: query has no {what}')
    topk, radius, temperature = check_match_settings(
        'topk_window_match', topk, radius, temperature)
    num_keys = frames * height * width
    if key_labels is None and topk > num_keys:
        raise ValueError(
            f'topk_window_match: topk={topk} exceeds the T*H*W = {num_keys} '
            'keys; topk_window_neighbours returns topk slots per position, '
            'so topk must be <= T*H*W (topk_window_match clamps it)')
    unrestricted_keys = check_integer('topk_window_match',
                                      'unrestricted_keys', unrestricted_keys)
    if not 0 <= unrestricted_keys <= frames:
        raise ValueError(
            'topk_window_match: unrestricted_keys must be in '
            f'[0, T={frames}], got {unrestricted_keys}')
    for name, t in (('query', query), ('keys', keys)):
        if t.device.type == 'cpu' and t.dtype not in CPU_FEATURE_DTYPES:
            raise ValueError(
                f'topk_window_match: {name} is {t.dtype}; on CPU features '
                'must be float32, float64 or bfloat16 (convert with '
                '.float())')
    if keys.dtype != query.dtype:
        raise ValueError(f'topk_window_match: query is {query.dtype} but '
                         f'keys are {keys.dtype}')
    asked = topk
    if key_labels is not None:
        topk = max(1, min(topk, most_eligible_keys(
            frames, height, width, radius, unrestricted_keys)))
    if query.device.type == 'cpu':
        batch = query.shape[0] if batched else 1
        nbytes = top_k_memory(batch, height, width, topk, query.dtype,
                              native_ops_available(query.device))
        if nbytes >= HOST_CHECK_BYTES:
            clamped = f'; a position sees at most {topk} keys' if (
                topk < asked) else ''
            check_host_allocation(
                'topk_window_match', nbytes,
                f'the top-{topk} lists of {batch * height * width} query '
                f'positions (topk={asked}{clamped})',
                'lower topk, the radius or the frame size')
    return _Args(batched=batched,
                 topk=topk,
                 radius=min(radius, float(height + width)),
                 temperature=temperature,
                 unrestricted_keys=unrestricted_keys)


def _widen_cpu_bf16(query: torch.Tensor, keys: torch.Tensor):
    """bf16 features on CPU as float32, others as they are: the CPU's bf16
    contract (exact bf16 values, float32 accumulation and weights) for the
    pure-PyTorch forms, where a bf16 matmul would round the affinities."""
    if query.device.type == 'cpu' and query.dtype == torch.bfloat16:
        return query.float(), keys.float()
    return query, keys


def cpu_bf16_kernel() -> str:
    """How the native CPU kernel scores bfloat16 features in this process.

    Checked at run time, at every call of the op: the CPU's instruction
    set (cpuid) and ``SFC_PLUGIN_DISABLE_BF16_DOT``.

    Returns:
        str: ``'avx512_bf16'`` where the ``vdpbf16ps`` micro-kernel runs;
        ``'float32 (<why>)'`` where the keys are widened to float32 and
        scored by the float32 micro-kernel; ``'reference (<why>)'`` where
        no native CPU kernel is loaded.
    """
    if not native_ops_available('cpu'):
        from .extension import native_ops_status
        return f'reference ({native_ops_status()})'
    reason = torch.ops.sfc._cpu_bf16_fallback_reason()
    return f'float32 ({reason})' if reason else 'avx512_bf16'


def cuda_kernel_config(dtype: torch.dtype,
                       device: Union[str, torch.device] = 'cuda') -> str:
    """The configuration of the CUDA kernel that matches ``dtype`` features
    on ``device`` in this process.

    Read at every call of the op: the device's compute capability and
    ``SFC_PLUGIN_TENSOR_CORES``. On sm_80 and later float16 and bfloat16
    features run a 16-bit tensor-core configuration
    (``...-tensorcores-...``) and float32 ones a 3xTF32 one
    (``...-tf32x3-...``); float64 features, older devices and
    ``SFC_PLUGIN_TENSOR_CORES=0`` the CUDA-core default
    (``...-micro...``).

    Args:
        dtype (torch.dtype): The features' type.
        device (str | torch.device): A CUDA device. Defaults to 'cuda'.

    Returns:
        str: The configuration's name, as
        ``torch.ops.sfc._topk_window_kernel_configs()`` lists it.

    Raises:
        RuntimeError: The CUDA kernel is not loaded (no CUDA device, or
            its build failed: the message says which).
        ValueError: ``device`` is not a CUDA device, or
            ``SFC_PLUGIN_TENSOR_CORES`` is neither 0 nor 1.
    """
    device = torch.device(device)
    if device.type != 'cuda':
        raise ValueError(f'cuda_kernel_config: {device} is not a CUDA device')
    if not native_ops_available(device):
        from .extension import native_ops_status
        raise RuntimeError(f'cuda_kernel_config: no CUDA kernel loaded '
                           f'({native_ops_status()})')
    return torch.ops.sfc._topk_window_op_config(dtype, device)


def matching_kernel(dtype: torch.dtype,
                    device: Union[str, torch.device]) -> str:
    """What matches ``dtype`` features on ``device`` in this process, in
    words: ``'CUDA <configuration>'`` (:func:`cuda_kernel_config`), ``'CPU
    kernel'`` (for bfloat16 with how it scores them, see
    :func:`cpu_bf16_kernel`), or ``'pure PyTorch (<why>)'`` where no native
    kernel serves the device. Near-ties may order differently from one to
    another, so a result records it (``summary.json``)."""
    device = torch.device(device)
    if not native_ops_available(device):
        from .extension import native_ops_status
        return f'pure PyTorch ({native_ops_status()})'
    if device.type == 'cuda':
        return f'CUDA {cuda_kernel_config(dtype, device)}'
    if dtype == torch.bfloat16:
        return f'CPU kernel, bf16 as {cpu_bf16_kernel()}'
    return 'CPU kernel'


def _notice_cpu_bf16(query: torch.Tensor) -> None:
    """Warns once per reason where the native CPU kernel cannot use
    ``vdpbf16ps`` for bf16 features."""
    if query.device.type != 'cpu' or query.dtype != torch.bfloat16:
        return
    reason = torch.ops.sfc._cpu_bf16_fallback_reason()
    if reason and reason not in _bf16_notices:
        _bf16_notices.add(reason)
        warnings.warn(
            'sfc_plugin: bfloat16 matching runs through float32 on this CPU '
            f'({reason}): the same bf16 products and float32 sums, but no '
            'faster than float32 features',
            stacklevel=3)


def _add_batch(batched: bool, *tensors: torch.Tensor):
    """The tensors with a leading batch dimension of 1 unless ``batched``:
    every implementation works on batched inputs."""
    return tensors if batched else tuple(t[None] for t in tensors)


def window_mask(height: int, width: int, radius: float,
                rows: Optional[slice] = None,
                device: Optional[torch.device] = None) -> torch.Tensor:
    """Which key positions lie within ``radius`` of each query position.

    Args:
        height (int): Feature map height H.
        width (int): Feature map width W.
        radius (float): A key at offset (dy, dx) is eligible iff
            dy² + dx² < radius².
        rows (slice, optional): Query positions (row-major indices into the
            H·W grid) to compute; all by default.

    Returns:
        Tensor: (Q, H·W) boolean mask.
    """
    pos = _positions(height, width, device)
    q = pos if rows is None else pos[rows]
    return _inside(q, pos, radius)


def _positions(height, width, device=None, y0=0, x0=0) -> torch.Tensor:
    """(H·W, 2) row-major (y, x) coordinates of the H × W grid whose
    top-left cell is (y0, x0), as float64 so that squared distances are
    exact."""
    ys = torch.arange(y0, y0 + height, device=device, dtype=torch.float64)
    xs = torch.arange(x0, x0 + width, device=device, dtype=torch.float64)
    return torch.stack(
        [ys[:, None].expand(-1, width),
         xs[None, :].expand(height, -1)], dim=-1).reshape(-1, 2)


def _inside(q_pos: torch.Tensor, k_pos: torch.Tensor,
            radius: float) -> torch.Tensor:
    d = q_pos[:, None, :] - k_pos[None, :, :]
    return (d * d).sum(-1) < radius * radius


def _window_bias(q_pos: torch.Tensor, height: int, width: int,
                 radius: float, dtype: torch.dtype) -> torch.Tensor:
    """(Q, H·W): 0 where a key of the H × W grid is in the window of a
    query position (``q_pos``, (Q, 2)), -inf elsewhere; ``radius`` finite.

    Built from the (Q, H) and (Q, W) squared offsets, so that it takes 1 +
    itemsize bytes per pair where the (Q, H·W, 2) differences of
    :func:`_inside` took 40. dy² + dx² < r² is tested as dx² <= n - dy²,
    with n the largest integer below r²: exact in int32.
    """
    square = radius * radius  # may overflow to inf
    limit = 2**31 - 1 if square >= 2**31 else math.ceil(square) - 1
    q_pos = q_pos.to(torch.int32)
    dy = q_pos[:, :1] - torch.arange(height, dtype=torch.int32,
                                     device=q_pos.device)
    dx = q_pos[:, 1:] - torch.arange(width, dtype=torch.int32,
                                     device=q_pos.device)
    inside = (dx * dx)[:, None, :] <= (limit - dy * dy)[:, :, None]
    zero = torch.zeros((), dtype=dtype, device=q_pos.device)
    return torch.where(inside, zero, -math.inf).flatten(1)


def aggregate_labels(weights: torch.Tensor, indices: torch.Tensor,
                     key_labels: torch.Tensor) -> torch.Tensor:
    """Weighted sum of the chosen keys' labels.

    Args:
        weights (Tensor): (B, H, W, k) softmax weights.
        indices (Tensor): (B, H, W, k) flat key indices t·H·W + y·W + x;
            -1 marks padding.
        key_labels (Tensor): (B, T, K, H, W) label maps of the key frames.

    Returns:
        Tensor: (B, K, H, W) in ``key_labels``' dtype.
    """
    b, t, k, h, w = key_labels.shape
    # Sizes spelt out: a -1 cannot be inferred from an empty batch.
    labels = key_labels.permute(0, 1, 3, 4, 2).reshape(b, t * h * w, k)

    def weighted_sum(wts: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        slots = idx.shape[-1]
        rows = idx.clamp(min=0).reshape(b, h * w * slots, 1).expand(-1, -1, k)
        chosen = labels.gather(1, rows).view(b, h * w, slots, k)
        wts = torch.where(idx >= 0, wts, 0).to(key_labels.dtype)
        return (chosen * wts.reshape(b, h * w, slots, 1)).sum(2)

    if torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
        # A traced graph takes any topk at run time: one block.
        out = weighted_sum(weights, indices)
    else:
        # Slots in blocks: the gathered labels of all topk slots at once
        # would take K times the lists' memory (gigabytes for a large
        # topk). The protocols' k fits one block.
        topk = indices.shape[-1]
        block = max(1, AGGREGATE_BYTES //
                    max(1, b * h * w * k * key_labels.element_size()))
        out = weighted_sum(weights[..., :block], indices[..., :block])
        for start in range(block, topk, block):
            out += weighted_sum(weights[..., start:start + block],
                                indices[..., start:start + block])
    return out.view(b, h, w, k).permute(0, 3, 1, 2).contiguous()


def _finish_topk(vals: torch.Tensor, idx: torch.Tensor, temperature: float
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Softmax weights of top-k affinities ((..., k) with -inf where
    ineligible): weight 0 and index -1 there; in float32 for
    reduced-precision affinities."""
    valid = torch.isfinite(vals)
    vals = vals.to(neighbour_weights_dtype(vals.dtype))
    weights = torch.softmax(vals / temperature, dim=-1)
    return torch.where(valid, weights, 0), torch.where(valid, idx, -1)


def _pad_slots(weights: torch.Tensor, idx: torch.Tensor, slots: int
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``weights`` and ``idx`` (..., k) padded to (..., slots) with weight
    0 and index -1."""
    missing = slots - weights.shape[-1]
    if missing <= 0:
        return weights, idx
    return (torch.cat([weights,
                       weights.new_zeros(*weights.shape[:-1], missing)], -1),
            torch.cat([idx, idx.new_full((*idx.shape[:-1], missing), -1)],
                      -1))


def _top(aff: torch.Tensor, topk: int
         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``aff.topk`` of at most the columns there are. Exported, k is
    computed by the graph (a tensor, not an int) from the T·H·W it is
    given, so a topk above it (any topk, "all keys") costs nothing."""
    if not torch.onnx.is_in_onnx_export():
        return aff.topk(min(topk, aff.shape[-1]), dim=-1)
    with warnings.catch_warnings():
        # The size is a value of the graph (Shape, Gather), not the
        # constant the tracer warns of: the tests run the graph on inputs
        # larger and smaller than the example.
        warnings.filterwarnings('ignore', 'torch.as_tensor results are '
                                'registered as constants')
        k = torch.clamp(torch.as_tensor(aff.shape[-1]), max=topk)
    return aff.topk(k, dim=-1)


def _dense_neighbours(q: torch.Tensor, q_pos: torch.Tensor,
                      keys: torch.Tensor, topk: int, radius: float,
                      temperature: float, unrestricted_keys: int
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Dense top-k of query rows against every key: affinity, window mask,
    ``topk``. Standard ops only (it is what ONNX exports).

    The unrestricted frames and the restricted ones are scored apart, the
    window added to the second product in place (0 or -inf), and the two
    top-k lists merged: no window-masked copy of the whole affinity, and a
    runtime may free one product before it makes the other.

    Args:
        q (Tensor): (B, Q, C) query features.
        q_pos (Tensor): (Q, 2) their (y, x) positions.
        keys (Tensor): (B, T, C, H, W).

    Returns:
        tuple[Tensor]: weights and flat indices, (B, Q, k) each, with
        k = min(topk, T·H·W); picks of ineligible keys have weight 0 and
        index -1.
    """
    b, t, c, h, w = keys.shape
    flat = keys.reshape(b, t, c, h * w)
    # Static in a graph (T is not): slices past T are empty there.
    free = (unrestricted_keys if torch.onnx.is_in_onnx_export() else
            min(unrestricted_keys, t))
    vals, idx = [], []
    if free:
        aff = torch.matmul(q, flat[:, :free].transpose(1, 2).flatten(2))
        v, i = _top(aff, topk)
        vals.append(v)
        idx.append(i)
    if torch.onnx.is_in_onnx_export() or free < t:
        aff = torch.matmul(q, flat[:, free:].transpose(1, 2).flatten(2))
        if math.isfinite(radius):
            window = _window_bias(q_pos, h, w, radius, aff.dtype)[:, None]
            if torch.onnx.is_in_onnx_export():
                # A trace loses in-place writes through a view; the
                # runtime may still add in place (no other reader).
                aff = (aff.unflatten(-1, (-1, h * w)) + window).flatten(2)
            else:
                aff.unflatten(-1, (-1, h * w)).add_(window)
        v, i = _top(aff, topk)
        vals.append(v)
        idx.append(i + free * h * w)
    del aff
    if len(vals) > 1:
        v, pick = _top(torch.cat(vals, -1), topk)
        vals, idx = [v], [torch.cat(idx, -1).gather(-1, pick)]
    return _finish_topk(vals[0], idx[0], temperature)


#: Copies of the dense (H·W, T·H·W) affinity a runtime holds at its peak
#: in the dense form, besides the window, from peaks measured with
#: ``benchmarks/propagation_step.py`` (BENCHMARKS.md), rounded up: 1.1-1.5
#: in PyTorch (the product, its top-k lists), 2.1-2.8 in one run of ONNX
#: Runtime 1.32 on the CPU (4.4-4.6 from the second run on with the CPU
#: memory arena, which keeps the first run's blocks: turn it off with
#: ``SessionOptions.enable_cpu_mem_arena = False`` for repeated runs).
DENSE_AFFINITY_COPIES = {'torch': 2, 'onnxruntime': 3}


def decomposed_bytes(batch: int, frames: int, height: int, width: int,
                     itemsize: int, runtime: str = 'torch') -> int:
    """Bytes the dense form (:func:`topk_window_match_decomposed`, or its
    ONNX graph with ``runtime='onnxruntime'``) holds at once: the
    (H·W, T·H·W) affinity of each batch item
    :data:`DENSE_AFFINITY_COPIES` times over, and the (H·W, H·W) window
    (a boolean and an ``itemsize`` value per pair)."""
    positions = height * width
    pairs = batch * positions * frames * positions
    return (pairs * DENSE_AFFINITY_COPIES[runtime] * itemsize +
            positions * positions * (1 + itemsize))


def check_decomposed_memory(owner: str, batch: int, frames: int, height: int,
                            width: int, itemsize: int,
                            runtime: str = 'torch') -> None:
    """Refuses a dense form the host memory left cannot hold, naming the
    feature map size (HostMemoryError)."""
    check_host_allocation(
        owner,
        decomposed_bytes(batch, frames, height, width, itemsize, runtime),
        f'the dense ({height * width}, {frames * height * width}) affinity '
        f'of {batch} query frame(s) of {width}×{height} features and '
        f'{frames} key frames', 'use the native op (the custom form) or '
        'smaller frames')


def topk_window_match_decomposed(query: torch.Tensor,
                                 keys: torch.Tensor,
                                 key_labels: torch.Tensor,
                                 *,
                                 topk: int,
                                 radius: float,
                                 temperature: float,
                                 unrestricted_keys: int = 1) -> torch.Tensor:
    """Batched dense form in standard operators only (MatMul, TopK,
    Softmax, GatherElements, ...): the ONNX decomposition exports this for
    runtimes without the ``sfc::TopkWindowMatch`` plugin.

    It builds the whole (H·W, T·H·W) affinity per batch item: about 3.5 GB
    in float32 at 480p with T = 21, where the native op needs none.

    Args:
        query (Tensor): (B, C, H, W). keys (Tensor): (B, T, C, H, W).
        key_labels (Tensor): (B, T, K, H, W). Others as
            :func:`topk_window_match`.

    Settings are validated as the op's are (an infinite radius means no
    window). ``topk`` beyond the keys a position can see would only add
    entries of weight 0: run eagerly it is clamped
    (:func:`most_eligible_keys`), so that an absurd k allocates nothing;
    an exported graph takes at most the T·H·W keys it is given.

    Returns:
        Tensor: (B, K, H, W).
    """
    topk, radius, temperature = check_match_settings(
        'topk_window_match_decomposed', topk, radius, temperature)
    b, c, h, w = query.shape
    if not torch.onnx.is_in_onnx_export():
        frames = keys.shape[1]
        if query.device.type == 'cpu':
            check_decomposed_memory('topk_window_match_decomposed', b,
                                    frames, h, w, query.element_size())
        topk = max(1, min(topk, most_eligible_keys(
            frames, h, w, radius, min(max(unrestricted_keys, 0), frames))))
    weights, idx = _dense_neighbours(
        query.reshape(b, c, h * w).transpose(1, 2),
        _positions(h, w, query.device), keys, topk, radius, temperature,
        unrestricted_keys)
    return aggregate_labels(weights.view(b, h, w, -1), idx.view(b, h, w, -1),
                            key_labels)


def topk_window_match_dense(query: torch.Tensor,
                            keys: torch.Tensor,
                            key_labels: torch.Tensor,
                            *,
                            topk: int,
                            radius: float,
                            temperature: float,
                            unrestricted_keys: int = 1) -> torch.Tensor:
    """Dense form as the CRW protocol computes it: each chunk of query
    positions against every key position (chunked masked matmul + topk).
    It scores all T·H·W keys for every query and is the baseline the
    benchmarks compare against.

    Arguments, result and edge cases as :func:`topk_window_match`.
    """
    args = _check(query, keys, key_labels, topk, radius, temperature,
                  unrestricted_keys)
    query, keys, key_labels = _add_batch(args.batched, query, keys,
                                         key_labels)
    query, keys = _widen_cpu_bf16(query, keys)
    b, t, c, h, w = keys.shape
    q = query.reshape(b, c, h * w).transpose(1, 2)
    pos = _positions(h, w, query.device)
    rows = max(1, CHUNK_BYTES // (max(b, 1) * t * h * w * q.element_size()))
    parts = [
        _dense_neighbours(q[:, i:i + rows], pos[i:i + rows], keys, args.topk,
                          args.radius, args.temperature,
                          args.unrestricted_keys)
        for i in range(0, h * w, rows)
    ]
    weights = torch.cat([p[0] for p in parts], 1).view(b, h, w, args.topk)
    idx = torch.cat([p[1] for p in parts], 1).view(b, h, w, args.topk)
    out = aggregate_labels(weights, idx, key_labels)
    return out if args.batched else out[0]


def _tiled_neighbours(query: torch.Tensor, keys: torch.Tensor, topk: int,
                      radius: float, temperature: float, free: int,
                      tile_size: int, check_overflow: bool = False
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference neighbours of one batch item: query (C, H, W), keys
    (T, C, H, W) -> weights, indices (H, W, topk).

    Query positions go in ``tile_size``² tiles; a tile is scored against
    the unrestricted frames and against the union of its positions'
    windows in the restricted frames only, never the dense affinity.
    ``check_overflow``: raise if an affinity is not finite (finite features
    too large for the dtype).
    """

    def checked(aff: torch.Tensor) -> torch.Tensor:
        if check_overflow and not torch.isfinite(aff).all():
            raise ValueError(_overflow_message(query, keys))
        return aff

    num_frames, channels, height, width = keys.shape
    hw = height * width
    keys_hwc = keys.permute(0, 2, 3, 1)  # a view when stored channels-last
    query_hwc = query.permute(1, 2, 0)
    free_keys = keys_hwc[:free].reshape(-1, channels)
    # Offsets d with |d| < radius: a window reaches `reach` cells each way.
    reach = math.ceil(radius) - 1
    windowed = num_frames > free and reach >= 0
    device = query.device
    weights = query.new_zeros(height, width, topk,
                              dtype=neighbour_weights_dtype(query.dtype))
    indices = torch.full((height, width, topk), -1, dtype=torch.long,
                         device=device)
    for y0 in range(0, height, tile_size):
        y1 = min(y0 + tile_size, height)
        for x0 in range(0, width, tile_size):
            x1 = min(x0 + tile_size, width)
            q = query_hwc[y0:y1, x0:x1].reshape(-1, channels)
            # Top-k of each candidate group, then of their union: the
            # joint top-k without concatenating the affinities.
            vals, idx = [], []
            if free:
                v, i = checked(q @ free_keys.t()).topk(
                    min(topk, free_keys.shape[0]), dim=1)
                vals.append(v)
                idx.append(i)
            if windowed:
                ky0, ky1 = max(0, y0 - reach), min(height, y1 + reach)
                kx0, kx1 = max(0, x0 - reach), min(width, x1 + reach)
                ys = torch.arange(ky0, ky1, device=device)
                xs = torch.arange(kx0, kx1, device=device)
                ts = torch.arange(free, num_frames, device=device)
                rect_flat = (ts[:, None, None] * hw + ys[None, :, None] * width
                             + xs[None, None, :]).reshape(-1)
                outside = ~_inside(
                    _positions(y1 - y0, x1 - x0, device, y0, x0),
                    _positions(ky1 - ky0, kx1 - kx0, device, ky0, kx0),
                    radius)
                rect = keys_hwc[free:, ky0:ky1, kx0:kx1].reshape(-1, channels)
                aff = checked(q @ rect.t()).view(q.shape[0],
                                                 num_frames - free, -1)
                aff.masked_fill_(outside[:, None], -math.inf)
                v, i = aff.view(q.shape[0], -1).topk(
                    min(topk, rect.shape[0]), dim=1)
                vals.append(v)
                idx.append(rect_flat[i])
            if not vals:
                continue
            v, i = torch.cat(vals, 1).topk(
                min(topk, sum(x.shape[1] for x in vals)), dim=1)
            w, i = _pad_slots(*_finish_topk(
                v, torch.cat(idx, 1).gather(1, i), temperature), topk)
            weights[y0:y1, x0:x1] = w.view(y1 - y0, x1 - x0, topk)
            indices[y0:y1, x0:x1] = i.view(y1 - y0, x1 - x0, topk)
    return weights, indices


def _max_norm(features: torch.Tensor) -> float:
    """Largest L2 norm over the channels (dim -3) of finite features, scaled
    by the largest |x| first: squares of large features overflow even in
    float64."""
    x = features.double()
    scale = x.abs().max().item()
    if scale == 0:
        return 0.0
    return scale * torch.linalg.vector_norm(x / scale, dim=-3).max().item()


def _overflow_message(query: torch.Tensor, keys: torch.Tensor) -> str:
    """What to say when finite features give non-finite affinities."""
    norm = max(_max_norm(t) for t in (query, keys))
    dtype = str(query.dtype).replace('torch.', '')
    return (f'topk_window_match: the affinities overflow {dtype} (features '
            f'of norm up to {norm:.1e}; the op expects unit-norm features)')


def _reference_neighbours(query: torch.Tensor, keys: torch.Tensor,
                          args: _Args, tile_size: int = 8
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`_tiled_neighbours` over a validated batch."""
    query, keys = _widen_cpu_bf16(query, keys)
    b, _, _, h, w = keys.shape
    if b == 0:
        return (query.new_empty(0, h, w, args.topk,
                                dtype=neighbour_weights_dtype(query.dtype)),
                torch.empty(0, h, w, args.topk, dtype=torch.long,
                            device=query.device))
    largest = []
    for name, t in (('query', query), ('keys', keys)):
        # One pass gives both the finiteness check and |x|'s bound below.
        lo, hi = (v.item() for v in torch.aminmax(t))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(
                f'topk_window_match: {name} contain NaN or infinite values')
        largest.append(max(-lo, hi))
    # |<q, k>| <= C·max|q|·max|k|: below half the dtype's range no affinity
    # can overflow, and the per-tile checks (a pass over every affinity)
    # are skipped, as they always are for unit-norm features.
    bound = keys.shape[2] * largest[0] * largest[1]
    check_overflow = bound > torch.finfo(query.dtype).max / 2
    parts = [
        _tiled_neighbours(q, k, args.topk, args.radius, args.temperature,
                          args.unrestricted_keys, tile_size, check_overflow)
        for q, k in zip(query, keys)
    ]
    return (torch.stack([p[0] for p in parts]),
            torch.stack([p[1] for p in parts]))


def _reference_match(query: torch.Tensor, keys: torch.Tensor,
                     key_labels: torch.Tensor, args: _Args,
                     tile_size: int = 8) -> torch.Tensor:
    """Reference labels of a validated batch."""
    out = aggregate_labels(
        *_reference_neighbours(query, keys, args, tile_size), key_labels)
    if not torch.isfinite(out).all():
        raise ValueError(
            'topk_window_match: key_labels contain NaN or infinite values')
    return out


def topk_window_neighbours_reference(
        query: torch.Tensor,
        keys: torch.Tensor,
        *,
        topk: int,
        radius: float,
        temperature: float,
        unrestricted_keys: int = 1,
        tile_size: int = 8) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch :func:`topk_window_neighbours` (tiled, any device).

    Args and result as :func:`topk_window_neighbours`, plus ``tile_size``
    (side of the query tiles, default 8).
    """
    args = _check(query, keys, None, topk, radius, temperature,
                  unrestricted_keys)
    weights, indices = _reference_neighbours(
        *_add_batch(args.batched, query, keys), args, tile_size)
    return ((weights, indices) if args.batched else
            (weights[0], indices[0]))


def topk_window_match_reference(query: torch.Tensor,
                                keys: torch.Tensor,
                                key_labels: torch.Tensor,
                                *,
                                topk: int,
                                radius: float,
                                temperature: float,
                                unrestricted_keys: int = 1,
                                tile_size: int = 8) -> torch.Tensor:
    """Pure-PyTorch :func:`topk_window_match` (tiled, any device): what
    runs where no native kernel serves the device.

    Args and result as :func:`topk_window_match`, plus ``tile_size``.
    """
    args = _check(query, keys, key_labels, topk, radius, temperature,
                  unrestricted_keys)
    out = _reference_match(
        *_add_batch(args.batched, query, keys, key_labels), args, tile_size)
    return out if args.batched else out[0]


def topk_window_neighbours(
        query: torch.Tensor,
        keys: torch.Tensor,
        *,
        topk: int,
        radius: float,
        temperature: float,
        unrestricted_keys: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """The top-k matches of every query position: which keys, and their
    softmax weights (for keypoints and visualisation).

    Args:
        query (Tensor): (C, H, W) or (B, C, H, W) features of the target
            frame.
        keys (Tensor): (T, C, H, W) or (B, T, C, H, W) features of the key
            frames. Any strides; channels-last storage is read without a
            copy.
        topk (int): Neighbours per query position, in [1, T·H·W] (the
            result has ``topk`` slots per position).
        radius, temperature, unrestricted_keys: as
            :func:`topk_window_match`.

    Returns:
        tuple[Tensor]: ``weights`` and ``indices`` (int64), both ([B,] H,
        W, topk): flat key indices t·H·W + y·W + x in decreasing affinity;
        slots beyond the eligible keys hold weight 0 and index -1. The
        weights are in the query dtype, except for float16 and bfloat16
        features: float32, the softmax's own precision
        (:func:`neighbour_weights_dtype`).
    """
    args = _check(query, keys, None, topk, radius, temperature,
                  unrestricted_keys)
    query, keys = _add_batch(args.batched, query, keys)
    if native_ops_available(query.device):
        _notice_cpu_bf16(query)
        weights, indices = torch.ops.sfc.topk_window_neighbours(
            query, keys, args.topk, args.radius, args.temperature,
            args.unrestricted_keys)
    else:
        weights, indices = _reference_neighbours(query, keys, args)
    return ((weights, indices) if args.batched else
            (weights[0], indices[0]))


def topk_window_match(query: torch.Tensor,
                      keys: torch.Tensor,
                      key_labels: torch.Tensor,
                      *,
                      topk: int,
                      radius: float,
                      temperature: float,
                      unrestricted_keys: int = 1) -> torch.Tensor:
    """Propagates key labels to a query frame by top-k windowed matching.

    See the module docstring for the exact definition and edge cases. Runs
    the native kernel where one serves the device (CPU: float32, float64
    and bfloat16, the last with float32 accumulation and an exact float32
    softmax; CUDA: float32, float64, float16 and bfloat16), the
    pure-PyTorch reference otherwise.
    Non-finite features or labels raise ``ValueError`` on CPU. The CUDA
    kernel does not check (a host-side check would stall the stream):
    non-finite affinities are never selected and non-finite labels
    propagate to the output.

    Args:
        query (Tensor): (C, H, W) or (B, C, H, W) unit-norm features of the
            target frame.
        keys (Tensor): (T, C, H, W) or (B, T, C, H, W) unit-norm features
            of the key frames; any strides (channels-last storage, as
            :class:`LabelPropagator` keeps them, is read without a copy).
        key_labels (Tensor): (T, K, H, W) or (B, T, K, H, W) label maps.
        topk (int): Neighbours per query position, >= 1; values above
            T·H·W act as T·H·W.
        radius (float): Window radius for the restricted key frames, >= 0;
            ``inf`` means no window.
        temperature (float): Softmax temperature τ, finite and > 0.
        unrestricted_keys (int): Leading key frames matched over all
            positions. Defaults to 1 (the first frame).

    Returns:
        Tensor: (K, H, W) or (B, K, H, W) propagated labels, in
        ``key_labels``' dtype whatever the features' (float32 labels with
        bfloat16 features give float32 labels, from float32 weights).
    """
    args = _check(query, keys, key_labels, topk, radius, temperature,
                  unrestricted_keys)
    query, keys, key_labels = _add_batch(args.batched, query, keys,
                                         key_labels)
    if native_ops_available(query.device):
        _notice_cpu_bf16(query)
        out = torch.ops.sfc.topk_window_match(query, keys, key_labels,
                                              args.topk, args.radius,
                                              args.temperature,
                                              args.unrestricted_keys)
    else:
        out = _reference_match(query, keys, key_labels, args)
    return out if args.batched else out[0]
