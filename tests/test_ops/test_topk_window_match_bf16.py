"""bfloat16 features in the CPU kernel, against the definition in float64.

The native kernel matches bf16 features on their exact bf16 values with
float32 accumulation, by the ``vdpbf16ps`` micro-kernel where the CPU has
AVX512_BF16 and through the float32 micro-kernel elsewhere (forced here with
``SFC_PLUGIN_DISABLE_BF16_DOT=1``); every test runs both. The expected
result is the definition evaluated in float64 on the same bf16-rounded
inputs, top-k taken by (affinity, then lower flat index): indices must
match exactly, except at positions whose float64 affinities come within
float32 accumulation error of each other (``NEAR_TIE``), where the selected
affinities are compared instead.
"""
import importlib
import math
import warnings

import pytest
import torch

from sfc_plugin.ops import (
    cpu_bf16_kernel,
    topk_window_match,
    topk_window_match_dense,
    topk_window_match_reference,
    topk_window_neighbours,
    topk_window_neighbours_reference,
)

from .test_topk_window_match import (
    check_frame_copies_follow_frame_0,
    definition,
    needs_native,
    random_inputs,
)

#: The module (the package exports a function of the same name).
ops_module = importlib.import_module('sfc_plugin.ops.topk_window_match')

pytestmark = pytest.mark.filterwarnings(
    'ignore:sfc_plugin. bfloat16 matching runs through float32')

#: Affinity gaps below this are near-ties: float32 sums of C products of
#: unit-norm features may order them either way.
NEAR_TIE = 1e-5
TEMPERATURE = 0.07

# (T, C, H, W, K, topk, radius, unrestricted_keys, batch)
CASES = {
    'C3-7x5': (3, 3, 7, 5, 1, 4, 2.0, 1, None),
    'C17-7x5': (3, 17, 7, 5, 2, 6, 2.5, 1, 2),
    'C37-tail': (2, 37, 6, 11, 3, 6, 2.5, 1, None),
    'C64': (3, 64, 9, 8, 2, 10, 3.0, 1, None),
    'C256': (4, 256, 8, 13, 2, 10, 3.0, 1, 2),
    'k-over-window': (3, 8, 4, 9, 40, 50, 3.0, 0, None),
    'three-unrestricted': (5, 20, 6, 7, 2, 8, 2.0, 3, None),
    'radius-inf': (3, 40, 5, 6, 2, 7, math.inf, 0, None),
    'radius0': (2, 6, 5, 5, 2, 7, 0.0, 1, None),
    'one-row': (3, 16, 1, 13, 2, 5, 3.0, 1, None),
    'tall-borders': (3, 33, 20, 3, 1, 9, 4.0, 1, None),
    'rows-beyond-a-run': (3, 32, 19, 6, 2, 8, 3.0, 1, 2),
}


@pytest.fixture(params=['avx512_bf16', 'float32'])
def bf16_kernel(request, monkeypatch):
    """Runs the test with the vdpbf16ps micro-kernel (skipped where the CPU
    lacks it) and with the float32 path."""
    needs_native()
    monkeypatch.setenv('SFC_PLUGIN_DISABLE_BF16_DOT',
                       '1' if request.param == 'float32' else '0')
    kernel = cpu_bf16_kernel()
    if request.param == 'avx512_bf16' and kernel != 'avx512_bf16':
        pytest.skip(f'bf16 runs as {kernel} on this CPU')
    assert kernel.startswith(request.param), kernel
    return request.param


def bf16_inputs(case):
    """The case's inputs as bf16 features and float32 labels."""
    t, c, h, w, k, _, _, _, batch = CASES[case]
    query, keys, labels = random_inputs(sum(map(ord, case)), t, c, h, w, k,
                                        batch=batch)
    return query.bfloat16(), keys.bfloat16(), labels.float()


def check_neighbours(weights, indices, query, keys, topk, radius,
                     unrestricted_keys, temperature=TEMPERATURE):
    """Compares one item's (H, W, k) weights and indices with the
    definition on the same bf16 values."""
    affinity, order, ranked = definition(query, keys, topk, radius,
                                         unrestricted_keys)
    h, w = query.shape[-2:]
    weights, indices = weights.reshape(h * w, -1), indices.reshape(h * w, -1)
    k = indices.shape[1]
    expected = order[:, :k].masked_fill(ranked[:, :k] == -math.inf, -1)
    # Near-ties among the first k + 1 eligible affinities: the order there
    # is float32 rounding's to choose. Exact ties (equal keys) are not:
    # they follow the index rule in every kernel.
    head = ranked[:, :k + 1]
    gaps = head[:, :-1] - head[:, 1:]
    near = ((gaps > 0) & (gaps < NEAR_TIE) & torch.isfinite(gaps)).any(1)
    assert torch.equal(indices[~near], expected[~near])
    # Everywhere: the chosen keys are eligible, distinct, and as good.
    chosen = affinity.gather(1, indices.clamp(min=0)).masked_fill(
        indices < 0, -math.inf)
    torch.testing.assert_close(chosen.sort(1, descending=True).values,
                               ranked[:, :k], rtol=0, atol=NEAR_TIE)
    for row in indices:
        valid = row[row >= 0]
        assert valid.unique().numel() == valid.numel()
    # float32 weights: the softmax of the chosen affinities.
    assert weights.dtype == torch.float32
    expected_w = torch.softmax(chosen / temperature, 1).nan_to_num(0.0)
    torch.testing.assert_close(weights.double(), expected_w, rtol=0,
                               atol=5e-5)
    return chosen


@pytest.mark.parametrize('case', CASES)
def test_neighbours_match_the_definition(bf16_kernel, case):
    t, c, h, w, _, topk, radius, free, batch = CASES[case]
    query, keys, _ = bf16_inputs(case)
    topk = min(topk, t * h * w)
    weights, indices = topk_window_neighbours(
        query, keys, topk=topk, radius=radius, temperature=TEMPERATURE,
        unrestricted_keys=free)
    assert weights.dtype == torch.float32 and indices.dtype == torch.long
    if batch is None:
        query, keys, weights, indices = (x[None] for x in (query, keys,
                                                            weights, indices))
    for item in range(query.shape[0]):
        check_neighbours(weights[item], indices[item], query[item],
                         keys[item], topk, radius, free)


@pytest.mark.parametrize('case', CASES)
def test_labels_are_float32_and_match_their_weights(bf16_kernel, case):
    """topk_window_match: float32 labels from float32 weights."""
    t, c, h, w, k, topk, radius, free, batch = CASES[case]
    query, keys, labels = bf16_inputs(case)
    kw = dict(topk=topk, radius=radius, temperature=TEMPERATURE,
              unrestricted_keys=free)
    out = topk_window_match(query, keys, labels, **kw)
    assert out.dtype == torch.float32
    assert out.shape == labels.shape[:-4] + (k, h, w)
    weights, indices = topk_window_neighbours(
        query, keys, **dict(kw, topk=min(topk, t * h * w)))
    lead = labels.shape[:-4]
    flat = labels.movedim(-3, -1).reshape(*lead, t * h * w, k)
    rows = indices.clamp(min=0).reshape(*lead, -1, 1).expand(*lead, -1, k)
    chosen = flat.gather(-2, rows).reshape(*indices.shape, k).double()
    expected = (weights.double().unsqueeze(-1) * chosen).sum(-2).movedim(
        -1, -3)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-6)
    # bf16 labels come out in bf16.
    assert topk_window_match(query, keys, labels.bfloat16(),
                             **kw).dtype == torch.bfloat16


@pytest.mark.parametrize('channels', [37, 64])
def test_equal_keys_keep_the_lower_index_across_frames(bf16_kernel,
                                                       channels):
    """Copies of frame 0 (unrestricted) in restricted frames 1 and 2 tie
    with it exactly: the frame-0 key first, then its copies in frame
    order, with equal weights."""
    check_frame_copies_follow_frame_0(torch.bfloat16, channels, 5, 6,
                                      radius=math.inf)


def test_equal_keys_in_one_frame_keep_the_lower_index(bf16_kernel):
    """Duplicated positions within frames: wherever both copies are
    chosen, the lower index comes first."""
    query, keys, _ = random_inputs(4, 2, 24, 6, 7, 1)
    keys[..., 3, :] = keys[..., 1, :]  # row 3 repeats row 1
    weights, indices = topk_window_neighbours(
        query.bfloat16(), keys.bfloat16(), topk=8, radius=3.0,
        temperature=0.1, unrestricted_keys=1)
    check_neighbours(weights, indices, query.bfloat16(), keys.bfloat16(), 8,
                     3.0, 1, temperature=0.1)


def test_both_kernels_agree(monkeypatch):
    """The vdpbf16ps and float32 paths differ only in the order of float32
    additions."""
    needs_native()
    query, keys, labels = bf16_inputs('C256')
    kw = dict(topk=10, radius=3.0, temperature=TEMPERATURE)
    monkeypatch.setenv('SFC_PLUGIN_DISABLE_BF16_DOT', '0')
    if cpu_bf16_kernel() != 'avx512_bf16':
        pytest.skip(f'bf16 runs as {cpu_bf16_kernel()} on this CPU')
    fast = topk_window_match(query, keys, labels, **kw)
    monkeypatch.setenv('SFC_PLUGIN_DISABLE_BF16_DOT', '1')
    portable = topk_window_match(query, keys, labels, **kw)
    torch.testing.assert_close(fast, portable, rtol=0, atol=1e-5)


def test_the_float32_path_says_so_once(monkeypatch):
    needs_native()
    monkeypatch.setenv('SFC_PLUGIN_DISABLE_BF16_DOT', '1')
    monkeypatch.setattr(ops_module, '_bf16_notices', set())
    query, keys, labels = bf16_inputs('C3-7x5')
    kw = dict(topk=4, radius=2.0, temperature=TEMPERATURE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        topk_window_match(query, keys, labels, **kw)
        topk_window_neighbours(query, keys, **kw)
    notices = [str(w.message) for w in caught]
    assert len(notices) == 1, notices
    assert notices[0].startswith(
        'sfc_plugin: bfloat16 matching runs through float32 on this CPU '
        '(SFC_PLUGIN_DISABLE_BF16_DOT is set)')
    assert cpu_bf16_kernel() == 'float32 (SFC_PLUGIN_DISABLE_BF16_DOT is set)'


@pytest.mark.parametrize('fn', [topk_window_match_reference,
                                topk_window_match_dense])
def test_pytorch_forms_widen_bf16_to_float32(fn):
    """Where no native kernel serves, bf16 CPU features get the same
    definition: bf16 values, float32 sums, float32 weights."""
    query, keys, labels = bf16_inputs('C64')
    kw = dict(topk=10, radius=3.0, temperature=TEMPERATURE)
    got = fn(query, keys, labels, **kw)
    expected = fn(query.float(), keys.float(), labels, **kw)
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)
    weights, indices = topk_window_neighbours_reference(query, keys, **kw)
    assert weights.dtype == torch.float32
    check_neighbours(weights, indices, query, keys, 10, 3.0, 1)


def test_opcheck_bf16():
    """The fake kernel gives bf16 features float32 weights, as the CPU
    kernel does."""
    needs_native()
    query, keys, labels = (x[None] for x in bf16_inputs('C3-7x5'))
    torch.library.opcheck(torch.ops.sfc.topk_window_neighbours.default,
                          (query, keys, 4, 2.0, 0.07, 1))
    torch.library.opcheck(torch.ops.sfc.topk_window_match.default,
                          (query, keys, labels, 4, 2.0, 0.07, 1))


@pytest.mark.parametrize('impl', ['native', 'reference'])
def test_bf16_affinity_overflow_is_named(bf16_kernel, impl):
    """bf16 has float32's range: features of norm 1e30 overflow the float32
    sums, and the message says float32."""
    query, keys, labels = random_inputs(3, 3, 6, 4, 5, 2)
    fn = topk_window_match if impl == 'native' else \
        topk_window_match_reference
    with pytest.raises(ValueError) as info:
        fn((query * 1e30).bfloat16(), (keys * 1e30).bfloat16(), labels,
           topk=3, radius=2.0, temperature=0.1)
    assert str(info.value).startswith(
        'topk_window_match: the affinities overflow float32 (features of '
        'norm up to 1.0e+30; the op expects unit-norm features)')


def test_bf16_checks(bf16_kernel):
    """The float32 checks hold for bf16: sizes, dtypes, topk, radius inf,
    non-finite features."""
    query, keys, labels = bf16_inputs('C17-7x5')
    kw = dict(radius=2.0, temperature=0.1)
    with pytest.raises(ValueError, match='query is torch.bfloat16 but keys'):
        topk_window_match(query, keys.float(), labels, topk=3, **kw)
    with pytest.raises(ValueError, match='query has no channels'):
        topk_window_match(query[:, :0], keys[:, :, :0], labels, topk=3, **kw)
    with pytest.raises(ValueError, match=r'topk=106 exceeds the T\*H\*W'):
        topk_window_neighbours(query, keys, topk=106, **kw)
    assert torch.equal(
        topk_window_match(query, keys, labels, topk=2**40, **kw),
        topk_window_match(query, keys, labels, topk=105, **kw))
    no_window = dict(topk=5, temperature=0.1, unrestricted_keys=0)
    assert torch.equal(
        topk_window_match(query, keys, labels, radius=math.inf, **no_window),
        topk_window_match(query, keys, labels, radius=12.0, **no_window))
    query[0, 1, 2, 3] = math.nan
    with pytest.raises(ValueError, match='query contain NaN'):
        topk_window_match(query, keys, labels, topk=3, **kw)
