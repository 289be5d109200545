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

import numpy as np
import pytest
import torch

from sfc_plugin.ops import (
    topk_window_match,
    topk_window_match_dense,
    topk_window_match_reference,
    topk_window_neighbours,
    topk_window_neighbours_reference,
)

from .test_topk_window_match import brute_force, needs_native, random_inputs


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
])
@pytest.mark.parametrize('impl', ['match-op', 'neighbours-op'])
def test_native_ops_check_their_settings(impl, kwargs, match):
    with pytest.raises(ValueError, match=f'^topk_window_match: {match}'):
        call(impl, *inputs(), **kwargs)


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
