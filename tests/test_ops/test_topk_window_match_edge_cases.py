"""Inputs at the edges of top-k windowed matching: empty sizes, settings of
the wrong type, unbounded top-k and radius, overflowing affinities.

Each case runs against every implementation that validates its arguments:
the public functions (native kernel here), the pure-PyTorch reference, the
dense baseline and the native ops called directly through ``torch.ops``,
which must never crash, hang or allocate without bound whatever a caller
passes.
"""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from sfc_plugin.ops import (
    most_eligible_keys,
    topk_window_match,
    topk_window_match_dense,
    topk_window_match_reference,
    topk_window_neighbours,
    topk_window_neighbours_reference,
)
from sfc_plugin.utils import memory

from .test_topk_window_match import brute_force, needs_native, random_inputs

# The module, not the function of the same name that sfc_plugin.ops exports.
topk_window_match_module = sys.modules['sfc_plugin.ops.topk_window_match']


def op_match(query, keys, key_labels, *, topk, radius, temperature,
             unrestricted_keys=1):
    needs_native()
    return torch.ops.sfc.topk_window_match(query, keys, key_labels, topk,
                                           radius, temperature,
                                           unrestricted_keys)


def op_neighbours(query, keys, *, topk, radius, temperature,
                  unrestricted_keys=1):
    needs_native()
    return torch.ops.sfc.topk_window_neighbours(query, keys, topk, radius,
                                                temperature,
                                                unrestricted_keys)


# name -> function on batched inputs
MATCH = {
    'match': topk_window_match,
    'match-reference': topk_window_match_reference,
    'match-dense': topk_window_match_dense,
    'match-op': op_match,
}
NEIGHBOURS = {
    'neighbours': topk_window_neighbours,
    'neighbours-reference': topk_window_neighbours_reference,
    'neighbours-op': op_neighbours,
}
ALL = {**MATCH, **NEIGHBOURS}
# The Python functions: the ones that see arguments of any Python type (the
# ops' schemas only take int and float).
PYTHON = [name for name in ALL if not name.endswith('-op')]


def call(name, query, keys, labels, **kw):
    """Runs implementation ``name``; neighbours ignore the labels."""
    kw = dict(dict(topk=3, radius=2.0, temperature=0.1), **kw)
    if name in MATCH:
        return MATCH[name](query, keys, labels, **kw)
    return NEIGHBOURS[name](query, keys, **kw)


def inputs(seed=0, t=3, c=6, h=4, w=5, k=2, batch=2):
    return random_inputs(seed, t, c, h, w, k, batch=batch)


EMPTY_SIZES = {
    'C=0': (dict(c=0), r'query has no channels \(C = 0\)'),
    'H=0': (dict(h=0), r'query has no rows \(H = 0\)'),
    'W=0': (dict(w=0), r'query has no columns \(W = 0\)'),
    'K=0': (dict(k=0), r'key_labels have no label channels \(K = 0\)'),
}


@pytest.mark.parametrize('impl,case', [(impl, case) for impl in ALL
                                       for case in EMPTY_SIZES
                                       if case != 'K=0' or impl in MATCH])
def test_empty_sizes_are_refused(impl, case):
    sizes, match = EMPTY_SIZES[case]
    with pytest.raises(ValueError, match=f'^topk_window_match: {match}'):
        call(impl, *inputs(**sizes))


@pytest.mark.parametrize('impl', ALL)
def test_empty_batch_gives_an_empty_result(impl):
    out = call(impl, *inputs(batch=0), topk=3)
    if impl in MATCH:
        assert out.shape == (0, 2, 4, 5)
    else:
        assert out[0].shape == out[1].shape == (0, 4, 5, 3)
        assert out[1].dtype == torch.long


@pytest.mark.parametrize(
    'value',
    [2.7, 2.0, True, '3', None,
     torch.tensor(2.0),
     torch.tensor(True),
     torch.tensor([2, 3])],
    ids=lambda v: repr(v))
@pytest.mark.parametrize('impl', PYTHON)
def test_topk_must_be_an_integer(impl, value):
    with pytest.raises(ValueError,
                       match='^topk_window_match: topk must be an integer'):
        call(impl, *inputs(), topk=value)


@pytest.mark.parametrize('impl', PYTHON)
def test_integer_like_settings_are_accepted(impl):
    """numpy scalars and 0-dim tensors are what configs and sweeps give."""
    args = inputs()
    expected = call(impl, *args, topk=3, radius=2.0, temperature=0.5)
    got = call(impl, *args, topk=np.int64(3), radius=np.float64(2.0),
               temperature=torch.tensor(0.5, dtype=torch.float64))
    if impl in MATCH:
        got, expected = (got, ), (expected, )
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


@pytest.mark.parametrize('kwargs,match', [
    (dict(topk=-2), 'topk must be >= 1'),
    (dict(radius='2'), 'radius must be a real number'),
    (dict(radius=None), 'radius must be a real number'),
    (dict(radius=True), 'radius must be a real number'),
    (dict(radius=-math.inf), 'radius must be >= 0'),
    (dict(temperature='0.1'), 'temperature must be a real number'),
    (dict(temperature=None), 'temperature must be a real number'),
    (dict(temperature=math.inf), 'temperature must be a finite number'),
    (dict(temperature=math.nan), 'temperature must be a finite number'),
    (dict(temperature=-0.1), 'temperature must be a finite number'),
    # 1e-40 gave NaN weights, blamed on the labels.
    (dict(temperature=1e-40), 'temperature must be a finite number >= 1e-30'),
    (dict(temperature=5e-324), 'temperature must be a finite number'),
    (dict(unrestricted_keys=1.0), 'unrestricted_keys must be an integer'),
    (dict(unrestricted_keys=True), 'unrestricted_keys must be an integer'),
    (dict(unrestricted_keys=None), 'unrestricted_keys must be an integer'),
])
@pytest.mark.parametrize('impl', PYTHON)
def test_settings_of_the_wrong_type_or_range_are_named(impl, kwargs, match):
    with pytest.raises(ValueError, match=f'^topk_window_match: {match}'):
        call(impl, *inputs(), **kwargs)


@pytest.mark.parametrize('kwargs,match', [
    (dict(temperature=math.inf), 'temperature must be a finite number'),
    (dict(temperature=math.nan), 'temperature must be a finite number'),
    (dict(radius=math.nan), 'radius must be >= 0'),
    (dict(topk=0), 'topk must be >= 1'),
    (dict(temperature=1e-40), 'temperature must be a finite number >= 1e-30'),
])
@pytest.mark.parametrize('impl', ['match-op', 'neighbours-op'])
def test_native_ops_check_their_settings(impl, kwargs, match):
    with pytest.raises(ValueError, match=f'^topk_window_match: {match}'):
        call(impl, *inputs(), **kwargs)


@pytest.mark.parametrize('impl', MATCH)
def test_smallest_temperature_is_a_hard_argmax(impl):
    """At the smallest temperature every form's softmax is finite and puts
    all weight on the best key: the labels of topk = 1."""
    query, keys, labels = inputs(seed=6)
    kw = dict(radius=2.0, unrestricted_keys=1)
    got = call(impl, query, keys, labels, topk=5, temperature=1e-30, **kw)
    top1 = call(impl, query, keys, labels, topk=1, temperature=0.1, **kw)
    assert torch.equal(got, top1)


@pytest.mark.parametrize('impl', MATCH)
def test_huge_topk_matches_as_all_keys(impl):
    """topk = 2**40 once asked for 184 TB: it is clamped to the T·H·W keys,
    which gives the same result (the rest would be padding)."""
    query, keys, labels = inputs(seed=1)
    all_keys = 3 * 4 * 5
    kw = dict(radius=1.5, temperature=0.1, unrestricted_keys=1)
    got = call(impl, query, keys, labels, topk=2**40, **kw)
    assert torch.equal(got, call(impl, query, keys, labels, topk=all_keys,
                                 **kw))
    expected = brute_force(query[0], keys[0], labels[0], all_keys, 1.5, 0.1,
                           1)
    torch.testing.assert_close(got[0], expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize('topk', [3 * 4 * 5 + 1, 2**40])
@pytest.mark.parametrize('impl', NEIGHBOURS)
def test_topk_above_the_keys_is_refused_for_neighbours(impl, topk):
    """The neighbours' result has topk slots per position: no clamping."""
    with pytest.raises(ValueError,
                       match=rf'topk={topk} exceeds the T\*H\*W = 60 keys'):
        call(impl, *inputs(), topk=topk)
    weights, indices = call(impl, *inputs(), topk=60, radius=1.0)
    # Frame 0 (20 keys) and the query's own position in frames 1 and 2.
    assert (indices[..., :22] >= 0).all() and (indices[..., 22:] == -1).all()
    assert (weights[..., 22:] == 0).all()


def eligible_counts(height, width, radius):
    """Eligible keys of one restricted frame for each query position,
    counted straight from the definition."""
    ys, xs = np.mgrid[:height, :width]
    return [int(((ys - y)**2 + (xs - x)**2 < radius**2).sum())
            for y in range(height) for x in range(width)]


@pytest.mark.parametrize('radius', [0.0, 0.5, 1.0, 1.5, math.sqrt(2), 2.5,
                                    3.0, 12.0, math.inf])
@pytest.mark.parametrize('height,width', [(1, 1), (1, 7), (5, 3), (9, 9),
                                          (11, 30)])
def test_most_eligible_keys_bounds_every_position(height, width, radius):
    """The bound the match functions clamp topk to: never below a
    position's eligible keys (that would drop neighbours), and exact where
    the window fits in the frame."""
    most = max(eligible_counts(height, width, radius))
    window = most_eligible_keys(1, height, width, radius, 0)
    assert window >= most
    if math.isinf(radius) or 2 * math.ceil(radius) + 1 <= min(height, width):
        assert window == most
    for frames, free in ((3, 0), (3, 1), (3, 3)):
        assert most_eligible_keys(frames, height, width, radius, free) == (
            free * height * width + (frames - free) * window)


@pytest.mark.parametrize('impl', ['match', 'match-reference', 'match-dense'])
def test_huge_topk_is_clamped_to_the_keys_a_position_sees(impl):
    """Before any allocation: the top-k lists are sized by the 38 keys a
    position can see (frame 0's 20 and a 9-key window in each of frames 1
    and 2), not by topk or the 60 keys, and the result is topk = 38's."""
    query, keys, labels = inputs(seed=3)
    kw = dict(radius=1.5, temperature=0.1, unrestricted_keys=1)
    assert most_eligible_keys(3, 4, 5, 1.5, 1) == 38
    got = call(impl, query, keys, labels, topk=10**12, **kw)
    assert torch.equal(got, call(impl, query, keys, labels, topk=38, **kw))
    torch.testing.assert_close(
        got[1], brute_force(query[1], keys[1], labels[1], 38, 1.5, 0.1, 1),
        rtol=0, atol=1e-10)


@pytest.mark.parametrize('impl', PYTHON)
def test_top_k_lists_beyond_the_host_memory_are_refused(impl, monkeypatch):
    """The lists are checked against the memory left before they are
    allocated (here with 1 MiB left and no threshold): a MemoryError naming
    topk, instead of the system's OOM killer."""
    monkeypatch.setattr(topk_window_match_module, 'HOST_CHECK_BYTES', 0)
    monkeypatch.setattr(memory, 'available_host_memory', lambda: 2**20)
    query, keys, labels = inputs(seed=4, h=40, w=50)
    kw = dict(radius=1.5, temperature=0.1, unrestricted_keys=1)
    if impl in MATCH:
        topk, lists = 10**6, (r'2018 lists of 4000 query positions '
                              r'\(topk=1000000; a position sees at most 2018 '
                              r'keys\)')
    else:
        topk, lists = 2000, (r'2000 lists of 4000 query positions '
                             r'\(topk=2000\)')
    with pytest.raises(
            memory.HostMemoryError,
            match=(rf'^topk_window_match: the top-{lists} need .* MiB of '
                   r'host memory, but 1.0 MiB is available; lower topk')):
        call(impl, query, keys, labels, topk=topk, **kw)
    # Small lists are not checked at all: the check costs a file read.
    monkeypatch.setattr(topk_window_match_module, 'HOST_CHECK_BYTES',
                        10 * 2**20)
    call(impl, query, keys, labels, topk=3, **kw)


def dense_float64(query, keys, labels, topk, temperature):
    """Labels of an unwindowed match (every key frame unrestricted), as
    one float64 matrix product, top-k and softmax."""
    b, t, c, h, w = keys.shape
    q = query.double().reshape(b, c, h * w).transpose(1, 2)
    k = keys.double().permute(0, 1, 3, 4, 2).reshape(b, t * h * w, c)
    lab = labels.double().permute(0, 1, 3, 4, 2).reshape(b, t * h * w, -1)
    vals, idx = (q @ k.transpose(1, 2) / temperature).topk(topk, dim=-1)
    wts = torch.softmax(vals, -1)
    out = (wts[..., None] * lab[torch.arange(b)[:, None, None], idx]).sum(2)
    return out.transpose(1, 2).reshape(b, -1, h, w)


@pytest.mark.parametrize('impl', ['match', 'match-op', 'match-reference'])
def test_labels_are_summed_in_blocks_of_slots(impl, monkeypatch):
    """A large topk's labels are gathered a block of slots at a time (all
    at once they took K times the lists' memory): the sum is the same.
    Here 600 slots of 40 × 50 positions and 16 labels (125 KiB a slot) make
    two blocks of the native kernels' 64 MiB; the reference is set to
    blocks of 7 slots."""
    monkeypatch.setattr(topk_window_match_module, 'AGGREGATE_BYTES',
                        7 * 40 * 50 * 16 * 8)
    query, keys, labels = random_inputs(5, 1, 8, 40, 50, 16, batch=1)
    kw = dict(radius=2.0, temperature=0.1, unrestricted_keys=1)
    got = call(impl, query, keys, labels, topk=600, **kw)
    torch.testing.assert_close(got, dense_float64(query, keys, labels, 600,
                                                  0.1), rtol=0, atol=1e-12)


_brute_force_no_window = {}


@pytest.mark.parametrize('radius', [math.inf, 1e300], ids=['inf', '1e300'])
@pytest.mark.parametrize('impl', ALL)
def test_unbounded_radius_means_no_window(impl, radius):
    """radius = inf once hung the native kernels and overflowed the
    reference; any radius >= H + W covers every key."""
    query, keys, labels = inputs(seed=2)
    kw = dict(topk=5, temperature=0.1, unrestricted_keys=0)
    got = call(impl, query, keys, labels, radius=radius, **kw)
    capped = call(impl, query, keys, labels, radius=4 + 5, **kw)
    if impl in NEIGHBOURS:
        assert torch.equal(got[0], capped[0])
        assert torch.equal(got[1], capped[1])
        return
    assert torch.equal(got, capped)
    if not _brute_force_no_window:
        _brute_force_no_window['out'] = brute_force(
            query[0], keys[0], labels[0], 5, math.inf, 0.1, 0)
    torch.testing.assert_close(got[0], _brute_force_no_window['out'],
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize('dtype,scale', [(torch.float32, 1e30),
                                         (torch.float64, 1e200)],
                         ids=['float32', 'float64'])
@pytest.mark.parametrize(
    'impl', [name for name in ALL if name != 'match-dense'])
def test_affinity_overflow_is_named(impl, dtype, scale):
    """Finite features too large for their dot products: the message says
    so instead of blaming the keys for NaN."""
    query, keys, labels = inputs(seed=3)
    with pytest.raises(ValueError) as info:
        call(impl, (query * scale).to(dtype), (keys * scale).to(dtype),
             labels, topk=3)
    name = str(dtype).replace('torch.', '')
    power = round(math.log10(scale))
    assert str(info.value).startswith(
        f'topk_window_match: the affinities overflow {name} (features of '
        f'norm up to 1.0e+{power}; the op expects unit-norm features)')


@pytest.mark.parametrize('channels,radius,expected', [
    (0, '2.0', 'ValueError topk_window_match: query has no channels (C = 0)'),
    (4, 'math.inf', 'same as radius H + W: True'),
])
def test_native_op_survives_direct_calls(channels, radius, expected, python,
                                         subprocess_env):
    """Direct torch.ops callers once got SIGFPE (C = 0) or a hang
    (radius = inf): run in a child so that neither takes pytest down."""
    needs_native()
    script = f'''
import math
import torch
from sfc_plugin.ops import load_native_ops
assert load_native_ops()
gen = torch.Generator().manual_seed(0)
q = torch.randn(1, {channels}, 3, 4, generator=gen)
k = torch.randn(1, 2, {channels}, 3, 4, generator=gen)
try:
    w, i = torch.ops.sfc.topk_window_neighbours(q, k, 5, {radius}, 0.1, 0)
except ValueError as e:
    print('ValueError', e)
else:
    w7, i7 = torch.ops.sfc.topk_window_neighbours(q, k, 5, 7.0, 0.1, 0)
    print('same as radius H + W:', torch.equal(i, i7) and torch.equal(w, w7))
'''
    done = subprocess.run([python, '-c', script], capture_output=True,
                          text=True, timeout=60, env=subprocess_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


@pytest.mark.parametrize('topk', [5, 2**62, 2**63 - 1])
def test_exported_decomposition_takes_at_most_the_keys_it_is_given(
        topk, tmp_path):
    """The exported graph computes k = min(topk, T·H·W) from the inputs it
    runs on: a topk above the keys ("all keys", up to the int64 limit)
    allocates nothing at export or at run time, and inputs larger and
    smaller than the example give the op's result."""
    pytest.importorskip('onnxruntime')
    from sfc_plugin.deploy import (
        PropagationStep,
        export_propagation_step,
        onnxruntime_session,
    )
    from sfc_plugin.deploy.propagation_step import INPUT_NAMES
    kw = dict(topk=topk, radius=1.5, temperature=0.1, unrestricted_keys=1)
    step = PropagationStep(**kw, form='decomposed')
    example = [x.float() for x in random_inputs(0, 2, 6, 3, 4, 2, batch=1)]
    path = export_propagation_step(step, str(tmp_path / 'step.onnx'),
                                   inputs=example)
    session = onnxruntime_session(path)
    # 60 keys (more than the example's 24) and 4 (fewer than topk = 5).
    for seed, (t, h, w) in enumerate([(3, 4, 5), (1, 2, 2), (2, 3, 4)]):
        query, keys, labels = (x.float() for x in random_inputs(
            seed, t, 6, h, w, 2, batch=1))
        got = session.run(None, dict(zip(INPUT_NAMES, [
            x.numpy() for x in (query, keys, labels)])))[0]
        torch.testing.assert_close(
            torch.from_numpy(got),
            topk_window_match(query, keys, labels, **kw), rtol=0, atol=2e-6)


@pytest.mark.parametrize('impl', PYTHON)
def test_topk_beyond_int64_is_refused_by_name(impl):
    """The ops' schemas take an int64: a larger topk is the caller's
    mistake, named, not pybind's TypeError."""
    with pytest.raises(ValueError, match=r'topk must be <= '
                       r'9223372036854775807 \(a 64-bit integer'):
        call(impl, *inputs(), topk=2**63)
    with pytest.raises(ValueError, match='got an integer of 5001 digits'):
        call(impl, *inputs(), topk=10**5000)


@pytest.mark.parametrize('radius', [0.0, 1e-300, 0.5, 1.0, math.sqrt(2),
                                    math.sqrt(8), 2.5, 3.0, 12.0, 46340.95,
                                    1e10, 1e200])
@pytest.mark.parametrize('height,width', [(1, 1), (1, 7), (5, 3), (9, 9),
                                          (11, 30)])
def test_the_dense_forms_window_is_the_definition(height, width, radius):
    """The dense forms' window (0 / -inf, from per-row and per-column
    offsets in int32) against dy² + dx² < r² in float64, at radii whose
    square is, or is just above, an integer, and beyond int32."""
    from sfc_plugin.ops.topk_window_match import _positions, _window_bias
    pos = _positions(height, width)
    ys, xs = pos[:, 0], pos[:, 1]
    d2 = (ys[:, None] - ys[None, :])**2 + (xs[:, None] - xs[None, :])**2
    expected = d2 < radius * radius
    for rows in (slice(None), slice(height * width // 2, None)):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            bias = _window_bias(pos[rows], height, width, radius, dtype)
            assert bias.dtype == dtype
            assert torch.equal(bias == 0, expected[rows])
            assert torch.equal(bias == -math.inf, ~expected[rows])
