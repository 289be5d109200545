"""Every implementation of top-k windowed matching against the definition.

One parametrised class runs each implementation available here (pure-PyTorch
reference and dense forms, the C++ CPU kernel, the CUDA kernel where a GPU
exists, both ONNX forms in ONNX Runtime) on fresh random inputs and compares
it with a float64 brute-force evaluation of the definition.
"""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from sfc_plugin.ops import (
    cpu_bf16_kernel,
    cuda_kernel_config,
    matching_kernel,
    native_ops_available,
    neighbour_weights_dtype,
    topk_window_match,
    topk_window_match_decomposed,
    topk_window_match_dense,
    topk_window_match_reference,
    topk_window_neighbours,
    topk_window_neighbours_reference,
    window_mask,
)

NATIVE_DISABLED = os.environ.get('SFC_PLUGIN_NATIVE_OPS') == '0'


def brute_force(query, keys, labels, topk, radius, temperature, unrestricted):
    """Position by position, in float64, straight from the definition."""
    query, keys, labels = query.double(), keys.double(), labels.double()
    t_frames, _, h, w = keys.shape
    out = torch.zeros(labels.shape[1], h, w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            cands = []
            for t in range(t_frames):
                for ky in range(h):
                    for kx in range(w):
                        if (t >= unrestricted and
                                (ky - y)**2 + (kx - x)**2 >= radius**2):
                            continue
                        a = float(query[:, y, x] @ keys[t, :, ky, kx])
                        cands.append((a / temperature, labels[t, :, ky, kx]))
            if not cands:
                continue
            cands.sort(key=lambda c: -c[0])
            top = cands[:topk]
            wts = torch.softmax(
                torch.tensor([c[0] for c in top], dtype=torch.float64), 0)
            out[:, y, x] = sum(wt * c[1] for wt, c in zip(wts, top))
    return out


def random_inputs(seed, t_frames, channels, h, w, num_labels, batch=None):
    gen = torch.Generator().manual_seed(seed)
    lead = () if batch is None else (batch, )
    query = F.normalize(torch.randn(*lead, channels, h, w, generator=gen,
                                    dtype=torch.float64), dim=-3)
    keys = F.normalize(torch.randn(*lead, t_frames, channels, h, w,
                                   generator=gen, dtype=torch.float64),
                       dim=-3)
    labels = torch.softmax(
        3 * torch.randn(*lead, t_frames, num_labels, h, w, generator=gen,
                        dtype=torch.float64), -3)
    return query, keys, labels


def needs_tensor_cores():
    """The CUDA kernel's tensor-core configurations: sm_80 and later."""
    needs_native('cuda')
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip('tensor cores with bfloat16 need compute capability 8.0')


def needs_native(device='cpu'):
    if NATIVE_DISABLED:
        pytest.skip('SFC_PLUGIN_NATIVE_OPS=0')
    if device == 'cuda' and not torch.cuda.is_available():
        pytest.skip('no CUDA device')
    assert native_ops_available(device), 'native kernel not built'


def check_frame_copies_follow_frame_0(dtype, channels, h, w, radius):
    """Frames 1 and 2 copy the unrestricted frame 0: for every position
    the kernel keeps frame 0's best key, then its copies in frame order,
    with equal weights (equal keys must score exactly equal)."""
    query, keys, _ = random_inputs(5, 3, channels, h, w, 1)
    keys[2] = keys[1] = keys[0]
    weights, indices = topk_window_neighbours(
        query.to(dtype), keys.to(dtype), topk=3, radius=radius,
        temperature=0.1, unrestricted_keys=1)
    first = indices[..., 0]
    assert (first < h * w).all()
    assert torch.equal(indices[..., 1], first + h * w)
    assert torch.equal(indices[..., 2], first + 2 * h * w)
    assert (weights == weights[..., :1]).all()


def definition(query, keys, topk, radius, unrestricted_keys):
    """float64 affinities of one item ((C, H, W) and (T, C, H, W) features)
    sorted by (affinity desc, flat index asc), ineligible keys -inf.

    Returns:
        tuple[Tensor]: ``affinity`` (H·W, T·H·W), ``order`` and ``sorted``
        (H·W, T·H·W): key indices and affinities in that order.
    """
    t, c, h, w = keys.shape
    q = query.double().reshape(c, h * w).t()
    k = keys.double().permute(0, 2, 3, 1).reshape(t * h * w, c)
    inside = window_mask(h, w, radius)
    eligible = torch.cat([
        torch.ones_like(inside) if f < unrestricted_keys else inside
        for f in range(t)
    ], 1)
    affinity = (q @ k.t()).masked_fill(~eligible, -math.inf)
    order = torch.sort(-affinity, dim=1, stable=True).indices
    return affinity, order, affinity.gather(1, order)


def onnx_impl(form):

    def run(query, keys, labels, **kw):
        pytest.importorskip('onnxruntime')
        if form == 'custom':
            pytest.importorskip('onnxruntime_extensions')
            needs_native()
        import tempfile

        from sfc_plugin.deploy import (
            PropagationStep,
            export_propagation_step,
            onnxruntime_session,
        )
        step = PropagationStep(**kw, form=form)
        inputs = [x[None].float() for x in (query, keys, labels)]
        with tempfile.TemporaryDirectory() as tmp:
            path = export_propagation_step(step, os.path.join(tmp, 'm.onnx'),
                                           inputs=inputs)
            sess = onnxruntime_session(path)
        out = sess.run(None, dict(zip(['query', 'keys', 'key_labels'],
                                      [x.numpy() for x in inputs])))[0]
        return torch.from_numpy(out)[0]

    return run


def native_impl(device, dtype):

    def run(query, keys, labels, **kw):
        needs_native(device)
        args = [x[None].to(device, dtype) for x in (query, keys, labels)]
        out = torch.ops.sfc.topk_window_match(*args, kw['topk'],
                                              kw['radius'], kw['temperature'],
                                              kw['unrestricted_keys'])
        return out[0].cpu()

    return run


def emulated_cuda_impl(dtype, target_blocks):
    """The CUDA kernels run on the CPU by the tests' SIMT emulation:
    ``target_blocks`` 1 keeps the frames in one group, a large one gives a
    group per frame and the merge kernel."""

    def run(query, keys, labels, **kw):
        from sfc_plugin.ops.topk_window_match import aggregate_labels

        from .cuda_emulation import emulated_neighbours
        query, keys, labels = (x[None].to(dtype)
                               for x in (query, keys, labels))
        # As the match op: k beyond the keys only adds padding.
        topk = min(kw['topk'], keys.shape[1] * keys.shape[3] * keys.shape[4])
        weights, indices = emulated_neighbours(
            query, keys, topk, kw['radius'], kw['temperature'],
            kw['unrestricted_keys'], target_blocks)
        return aggregate_labels(weights, indices, labels)[0]

    return run


# name -> (callable on unbatched float64 inputs, tolerance)
IMPLEMENTATIONS = {
    'reference': (topk_window_match_reference, 1e-10),
    'reference-tile3':
    (lambda *a, **k: topk_window_match_reference(*a, tile_size=3, **k),
     1e-10),
    'dense': (topk_window_match_dense, 1e-10),
    'decomposed':
    (lambda q, k, lab, **kw: topk_window_match_decomposed(
        q[None], k[None], lab[None], **kw)[0], 1e-10),
    'cpu-kernel': (native_impl('cpu', torch.float64), 1e-10),
    'cpu-kernel-fp32': (native_impl('cpu', torch.float32), 2e-5),
    'cuda-kernel': (native_impl('cuda', torch.float64), 1e-10),
    'cuda-kernel-fp32': (native_impl('cuda', torch.float32), 2e-5),
    'cuda-emulated': (emulated_cuda_impl(torch.float64, 1), 1e-10),
    'cuda-emulated-fp32-groups':
    (emulated_cuda_impl(torch.float32, 10**6), 2e-5),
    'onnx-decomposed': (onnx_impl('decomposed'), 2e-5),
    'onnx-custom': (onnx_impl('custom'), 2e-5),
}

# (T, C, H, W, K, topk, radius, unrestricted_keys)
CASES = {
    'odd-sizes': (3, 8, 5, 7, 2, 4, 2.0, 1),
    'two-unrestricted': (4, 5, 7, 4, 3, 10, 1.5, 2),
    'T1-K1': (1, 4, 6, 5, 1, 3, 2.0, 1),
    'T1-restricted': (1, 4, 6, 5, 2, 3, 2.0, 0),
    'K20-k-over-window': (3, 6, 4, 9, 20, 50, 3.0, 0),
    'radius0': (2, 6, 5, 5, 2, 7, 0.0, 1),
    'k-over-all-keys': (3, 3, 3, 3, 2, 1000, 1.0, 1),
    'simd-and-tail-channels': (2, 37, 6, 11, 2, 6, 2.5, 1),
    'no-eligible-key': (2, 6, 4, 4, 2, 5, 0.0, 0),
    'radius-beyond-frame': (2, 5, 4, 6, 2, 8, 100.0, 0),
    'one-row': (3, 16, 1, 13, 2, 5, 3.0, 1),
    # More rows than the CPU kernel matches in one run (kRows = 16).
    'rows-beyond-a-run': (3, 8, 37, 5, 2, 6, 3.0, 1),
}
_expected = {}


@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('impl', IMPLEMENTATIONS)
class TestTopkWindowMatch:

    def test_matches_definition(self, impl, case):
        fn, tol = IMPLEMENTATIONS[impl]
        t, c, h, w, k, topk, radius, free = CASES[case]
        query, keys, labels = random_inputs(
            sum(map(ord, case)), t, c, h, w, k)
        kw = dict(topk=topk, radius=radius, temperature=0.07,
                  unrestricted_keys=free)
        if case not in _expected:
            _expected[case] = brute_force(query, keys, labels, topk, radius,
                                          0.07, free)
        got = fn(query, keys, labels, **kw)
        assert got.shape == (k, h, w)
        torch.testing.assert_close(got.double(), _expected[case], rtol=0,
                                   atol=tol)



@pytest.mark.parametrize('impl', IMPLEMENTATIONS)
def test_ties_with_equal_labels(impl):
    """Duplicated key frames tie everywhere; equal labels make the result
    independent of which tied key is kept."""
    fn, tol = IMPLEMENTATIONS[impl]
    query, keys, labels = random_inputs(7, 4, 5, 7, 4, 3)
    keys[1], labels[1] = keys[0], labels[0]
    keys[3], labels[3] = keys[2], labels[2]
    kw = dict(topk=10, radius=1.5, temperature=0.1, unrestricted_keys=2)
    expected = brute_force(query, keys, labels, 10, 1.5, 0.1, 2)
    torch.testing.assert_close(fn(query, keys, labels, **kw).double(),
                               expected, rtol=0, atol=tol)


def test_native_kernel_is_built():
    """The README install must give the CPU kernel on this machine."""
    needs_native('cpu')


@pytest.mark.parametrize('device', ['cpu', 'cuda'])
def test_native_ties_keep_the_lower_key_index(device):
    needs_native(device)
    query, keys, labels = random_inputs(3, 3, 8, 5, 6, 2)
    keys[2] = keys[1] = keys[0]
    weights, indices = topk_window_neighbours(
        query.to(device), keys.to(device), topk=3, radius=3.0,
        temperature=0.1, unrestricted_keys=3)
    hw = 5 * 6
    # Frames 0, 1, 2 tie for every position: the best key of frame 0 first,
    # then its copies in frames 1 and 2.
    first = indices[..., 0].cpu()
    assert (first < hw).all()
    assert torch.equal(indices[..., 1].cpu(), first + hw)
    assert torch.equal(indices[..., 2].cpu(), first + 2 * hw)
    torch.testing.assert_close(weights.cpu(),
                               torch.full_like(weights.cpu(), 1 / 3))


def test_cuda_kernel_configs_give_the_ops_neighbours(monkeypatch):
    """Every CUDA-core configuration the CUDA kernel is built in (the
    benchmarks' sfc::_topk_window_neighbours_config) returns exactly the
    op's float32 neighbours on CUDA cores on the device: partial tiles of
    every shape, a channel tail, two batch items, and ties. (On sm_80+ the
    op's own float32 choice is 3xTF32, whose weights may differ in the
    last bits: test_cuda_tensor_core_configs_find_the_top_k checks it.)"""
    needs_native('cuda')
    monkeypatch.setenv('SFC_PLUGIN_TENSOR_CORES', '0')
    query, keys, _ = random_inputs(23, 3, 37, 10, 19, 1, batch=2)
    keys[:, 2] = keys[:, 0]
    query, keys = query.float().cuda(), keys.float().cuda()
    args = (query, keys, 9, 3.5, 0.07, 1)
    weights, indices = torch.ops.sfc.topk_window_neighbours(*args)
    configs = [c for c in torch.ops.sfc._topk_window_kernel_configs()
               if not tensor_core_config(c)]
    assert len(configs) >= 2
    for config in configs:
        got_w, got_i = torch.ops.sfc._topk_window_neighbours_config(
            *args, config)
        assert torch.equal(got_i, indices), config
        assert torch.equal(got_w, weights), config


def tensor_core_config(config, dtype=None):
    """Whether a CUDA kernel configuration scores on tensor cores (for
    ``dtype`` features, if given): 16-bit MMA for float16 and bfloat16,
    3xTF32 for float32."""
    if '-tf32x3-' in config:
        return dtype in (None, torch.float32)
    return 'tensorcores' in config and dtype in (None, torch.float16,
                                                 torch.bfloat16)


@pytest.mark.parametrize('channels', [37, 64])
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16,
                                   torch.float32])
def test_cuda_tensor_core_configs_find_the_top_k(dtype, channels):
    """The tensor-core configurations on the device (16-bit MMA; 3xTF32
    for float32), against the float64 definition on the rounded features:
    the chosen keys' affinities are the top k (the tensor cores group the
    float32 sums their own way, so only a near-tie may pick a different
    key; 3xTF32 to float32 accuracy, every 3xTF32 configuration the same
    neighbours), and copies of frame 0 tie exactly with it."""
    needs_tensor_cores()
    t, h, w, topk = 3, 10, 19, 9
    query, keys, _ = random_inputs(29, t, channels, h, w, 1)
    keys[2] = keys[0]
    query, keys = query.to(dtype).double(), keys.to(dtype).double()
    affinity, order, _ = definition(query, keys, topk, 3.5, 1)
    best = affinity.gather(1, order[:, :topk])
    configs = [c for c in torch.ops.sfc._topk_window_kernel_configs()
               if tensor_core_config(c, dtype)]
    assert configs
    first = None
    for config in configs:
        weights, indices = torch.ops.sfc._topk_window_neighbours_config(
            query[None].to('cuda', dtype), keys[None].to('cuda', dtype),
            topk, 3.5, 0.1, 1, config)
        assert weights.dtype == torch.float32
        got = affinity.gather(1, indices[0].reshape(h * w, topk).cpu())
        torch.testing.assert_close(
            got, best, rtol=0,
            atol=1e-6 if dtype == torch.float32 else 1e-5, msg=config)
        if dtype == torch.float32:
            first = first or (weights, indices)
            assert torch.equal(indices, first[1]), config
            assert torch.equal(weights, first[0]), config
        expected = torch.softmax(got / 0.1, 1)
        torch.testing.assert_close(
            weights[0].reshape(h * w, topk).double().cpu(), expected,
            rtol=0, atol=1e-4, msg=config)
        # Frame 2 copies frame 0 (unrestricted): where a frame-2 key is
        # kept, its frame-0 original is kept right before it.
        flat = indices[0].reshape(h * w, topk).cpu()
        in_copy = flat >= 2 * h * w
        originals = (flat - 2 * h * w).where(in_copy, flat)
        for row, col in in_copy.nonzero().tolist():
            assert originals[row, col] in flat[row, :col], config


def test_cuda_tensor_cores_are_the_default(monkeypatch):
    """On this device (sm_80 or later) the op matches bfloat16 features
    with the first 16-bit tensor-core configuration and float32 ones with
    the first 3xTF32 one, float64 on CUDA cores, as
    sfc::_topk_window_op_config says; SFC_PLUGIN_TENSOR_CORES=0 puts every
    type on the CUDA-core default; anything but 0 or 1 is refused."""
    needs_tensor_cores()
    query, keys, _ = random_inputs(31, 3, 64, 10, 19, 1, batch=1)
    bf16 = (query.to('cuda', torch.bfloat16), keys.to('cuda', torch.bfloat16))
    fp32 = (query.float().cuda(), keys.float().cuda())
    fp64 = (query.cuda(), keys.cuda())
    configs = torch.ops.sfc._topk_window_kernel_configs()
    tensor_cores = next(c for c in configs
                        if tensor_core_config(c, torch.bfloat16))
    tf32 = next(c for c in configs if tensor_core_config(c, torch.float32))

    def run(features, config=None):
        args = (*features, 9, 3.5, 0.07, 1)
        if config is None:
            return torch.ops.sfc.topk_window_neighbours(*args)
        return torch.ops.sfc._topk_window_neighbours_config(*args, config)

    monkeypatch.setenv('SFC_PLUGIN_TENSOR_CORES', '0')
    fp64_default = run(fp64)
    for value, bf16_config, fp32_config in (
            (None, tensor_cores, tf32), ('1', tensor_cores, tf32),
            ('0', configs[0], configs[0])):
        if value is None:
            monkeypatch.delenv('SFC_PLUGIN_TENSOR_CORES', raising=False)
        else:
            monkeypatch.setenv('SFC_PLUGIN_TENSOR_CORES', value)
        for features, config in ((bf16, bf16_config), (fp32, fp32_config),
                                 (fp64, configs[0])):
            dtype, device = features[0].dtype, features[0].device
            assert torch.ops.sfc._topk_window_op_config(
                dtype, device) == config, (value, dtype)
            # The configurations but the default are built for 16-bit or
            # float32 features only.
            want = (fp64_default if dtype == torch.float64 else
                    run(features, config))
            for got, expected in zip(run(features), want):
                assert torch.equal(got, expected), (value, dtype)
    monkeypatch.setenv('SFC_PLUGIN_TENSOR_CORES', 'yes')
    with pytest.raises(ValueError, match="SFC_PLUGIN_TENSOR_CORES must be "
                       "0 or 1, got 'yes'"):
        run(bf16)
    with pytest.raises(ValueError, match='for CUDA devices, got cpu'):
        torch.ops.sfc._topk_window_op_config(torch.float32,
                                             torch.device('cpu'))


def test_matching_kernel_names_what_matches():
    """In words, per device and feature type: the CPU kernel (bf16 with
    how it scores them), a CUDA configuration, or the pure-PyTorch path
    with the reason."""
    if not native_ops_available('cpu'):
        assert matching_kernel(torch.float32, 'cpu').startswith(
            'pure PyTorch (native kernels ')
        return
    assert matching_kernel(torch.float32, 'cpu') == 'CPU kernel'
    assert matching_kernel(torch.float64, 'cpu') == 'CPU kernel'
    assert matching_kernel(torch.bfloat16, 'cpu') == (
        f'CPU kernel, bf16 as {cpu_bf16_kernel()}')
    if torch.cuda.is_available() and native_ops_available('cuda'):
        assert matching_kernel(torch.float32, 'cuda') == (
            f'CUDA {cuda_kernel_config(torch.float32)}')


def test_cuda_kernel_config_names_what_runs():
    """cuda_kernel_config says which CUDA kernel configuration matches a
    feature type: the op's own choice where the CUDA kernel is loaded; a
    CPU device is refused, and without the CUDA kernel the error says
    what is loaded instead."""
    with pytest.raises(ValueError, match='cpu is not a CUDA device'):
        cuda_kernel_config(torch.float32, 'cpu')
    if not (torch.cuda.is_available() and native_ops_available('cuda')):
        with pytest.raises(RuntimeError, match=r'no CUDA kernel loaded \('
                           r'native kernels'):
            cuda_kernel_config(torch.float32)
        return
    configs = torch.ops.sfc._topk_window_kernel_configs()
    for dtype in (torch.float16, torch.bfloat16, torch.float32,
                  torch.float64):
        name = cuda_kernel_config(dtype)
        assert name in configs
        assert name == torch.ops.sfc._topk_window_op_config(
            dtype, torch.device('cuda', torch.cuda.current_device()))


@pytest.mark.parametrize('channels', [3, 37, 64])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_native_ties_across_unrestricted_and_restricted_frames(dtype,
                                                               channels):
    """Copies of the unrestricted frame 0 in restricted frames score exactly
    as it does, whatever C (float32 once scored them an ulp apart where C
    is not a multiple of 16): frame 0's key first, then its copies."""
    needs_native('cpu')
    check_frame_copies_follow_frame_0(dtype, channels, 9, 11, radius=100.0)


@pytest.mark.parametrize('topk', [1, 9, 15, 16, 17, 40, 200, 201, 260])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_many_ties_keep_the_lower_key_index(dtype, topk):
    """Features in steps of 1/4 score exactly, with ties everywhere; for k
    around 16 (the float top-k's vector insertion), around 200 (past which
    the top-k collects into a heap) and past them, the kept keys are the
    first k by (affinity, then lower flat index)."""
    needs_native('cpu')
    size = {} if topk <= 40 else dict(h=12, w=20, radius=4.5)
    check_many_ties(topk_window_neighbours, dtype, topk, **size)


@pytest.mark.parametrize('topk', [150, 201, 500])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64,
                                   torch.bfloat16])
def test_large_topk_equals_the_reference(dtype, topk):
    """Around and past 200 neighbours (the heap): the reference's
    neighbours in its order, k up to beyond the keys a position sees (the
    rest padding)."""
    needs_native('cpu')
    query, keys, _ = random_inputs(27, 3, 8, 12, 15, 1)
    query, keys = query.to(dtype), keys.to(dtype)
    kw = dict(topk=topk, radius=3.0, temperature=0.1, unrestricted_keys=1)
    weights, indices = topk_window_neighbours(query, keys, **kw)
    ref_w, ref_i = topk_window_neighbours_reference(query, keys, **kw)
    assert torch.equal(indices, ref_i)
    torch.testing.assert_close(weights, ref_w)


def check_many_ties(neighbours, dtype, topk, h=6, w=7, radius=2.5):
    """``neighbours(query, keys, topk=, radius=, temperature=,
    unrestricted_keys=)`` on features in steps of 1/4, which score exactly
    and tie everywhere: the first k keys by (affinity, then flat index).
    ``topk`` at most the keys a corner position sees."""
    t, c = 4, 16
    query, keys, _ = random_inputs(14, t, c, h, w, 1)
    query, keys = ((x * 4).round() / 4 for x in (query, keys))
    weights, indices = neighbours(
        query.to(dtype), keys.to(dtype), topk=topk, radius=radius,
        temperature=0.5, unrestricted_keys=1)
    affinity, order, _ = definition(query, keys, topk, radius, 1)
    order = order[:, :topk]
    assert torch.equal(indices.reshape(h * w, topk), order)
    expected = torch.softmax(affinity.gather(1, order) / 0.5, 1)
    torch.testing.assert_close(weights.reshape(h * w, topk).double(),
                               expected)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_neighbours_equal_reference(dtype):
    needs_native('cpu')
    query, keys, _ = random_inputs(11, 4, 21, 7, 9, 1)
    query, keys = query.to(dtype), keys.to(dtype)
    kw = dict(topk=6, radius=2.2, temperature=0.05, unrestricted_keys=1)
    weights, indices = topk_window_neighbours(query, keys, **kw)
    ref_w, ref_i = topk_window_neighbours_reference(query, keys, **kw)
    assert weights.shape == indices.shape == (7, 9, 6)
    assert indices.dtype == torch.long and weights.dtype == dtype
    assert torch.equal(indices, ref_i)
    torch.testing.assert_close(weights, ref_w)


def test_neighbours_padding_beyond_the_eligible_keys():
    query, keys, _ = random_inputs(12, 2, 4, 3, 3, 1)
    weights, indices = topk_window_neighbours(query, keys, topk=12,
                                              radius=1.0, temperature=0.1,
                                              unrestricted_keys=1)
    # 9 keys of frame 0 + the query's own position in frame 1.
    assert (indices[..., :10] >= 0).all()
    assert (indices[..., 10:] == -1).all() and (weights[..., 10:] == 0).all()
    torch.testing.assert_close(weights.sum(-1),
                               torch.ones(3, 3, dtype=torch.float64))


REDUCED = (torch.float16, torch.bfloat16)


@pytest.mark.parametrize('device', ['cpu', 'cuda'])
@pytest.mark.parametrize(
    'dtype', [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_weights_are_float32_for_reduced_precision_on_every_device(
        device, dtype):
    """What the kernels promise, seen through the fake kernel that
    torch.compile and torch.export trace with (fake CUDA tensors need no
    GPU): float32 softmax weights for float16 and bfloat16 features."""
    needs_native()
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        query = torch.empty(2, 4, 5, 6, dtype=dtype, device=device)
        keys = torch.empty(2, 3, 4, 5, 6, dtype=dtype, device=device)
        labels = torch.empty(2, 3, 2, 5, 6, dtype=torch.float16,
                             device=device)
        weights, indices = torch.ops.sfc.topk_window_neighbours(
            query, keys, 3, 2.0, 0.1, 1)
        out = torch.ops.sfc.topk_window_match(query, keys, labels, 3, 2.0,
                                              0.1, 1)
    expected = torch.float32 if dtype in REDUCED else dtype
    assert weights.dtype == neighbour_weights_dtype(dtype) == expected
    assert weights.shape == indices.shape == (2, 5, 6, 3)
    assert indices.dtype == torch.long
    assert out.dtype == torch.float16 and out.shape == (2, 2, 5, 6)


@pytest.mark.parametrize('dtype', REDUCED)
def test_pytorch_forms_take_the_softmax_of_reduced_precision_in_float32(
        dtype):
    """The forms that run on CUDA for float16 and bfloat16 (the reference's
    tiles, the dense and decomposed form) score in that type and give
    float32 weights: a float32 softmax, not one rounded to the type."""
    from sfc_plugin.ops.topk_window_match import (
        _dense_neighbours,
        _positions,
        _tiled_neighbours,
    )
    query, keys, _ = random_inputs(14, 3, 16, 5, 6, 1)
    query, keys = query.to(dtype), keys.to(dtype)
    tiled = _tiled_neighbours(query, keys, 6, 2.0, 0.1, 1, 3)
    dense = _dense_neighbours(
        query.reshape(16, 30).t()[None], _positions(5, 6), keys[None], 6,
        2.0, 0.1, 1)
    affinity, order, _ = definition(query.double(), keys.double(), 6, 2.0,
                                    1)
    expected = torch.softmax(affinity.gather(1, order[:, :6]) / 0.1, 1)
    tolerance = {torch.float16: 2e-2, torch.bfloat16: 1.6e-1}[dtype]
    for weights, _ in (tiled, dense):
        weights = weights.reshape(30, 6)
        assert weights.dtype == torch.float32
        torch.testing.assert_close(weights.sum(1), torch.ones(30))
        # Values the type cannot hold: the softmax ran in float32.
        assert (weights != weights.to(dtype).float()).any()
        # The weights of the affinities as the type rounds them.
        torch.testing.assert_close(weights.double().sort(1).values,
                                   expected.sort(1).values, rtol=0,
                                   atol=tolerance)


def test_batched_equals_per_item():
    query, keys, labels = random_inputs(13, 3, 8, 5, 6, 2, batch=3)
    kw = dict(topk=5, radius=2.0, temperature=0.07, unrestricted_keys=1)
    out = topk_window_match(query, keys, labels, **kw)
    assert out.shape == (3, 2, 5, 6)
    for b in range(3):
        torch.testing.assert_close(
            out[b], topk_window_match(query[b], keys[b], labels[b], **kw))


def test_any_strides_give_the_same_result():
    """Non-contiguous inputs are documented to work: channels-last keys
    (the propagator's layout) are read in place, others copied."""
    query, keys, labels = random_inputs(14, 3, 16, 6, 7, 2)
    kw = dict(topk=5, radius=2.0, temperature=0.07, unrestricted_keys=1)
    expected = topk_window_match(query, keys, labels, **kw)
    q_t = query.transpose(1, 2).contiguous().transpose(1, 2)
    k_cl = keys.contiguous(memory_format=torch.channels_last)
    lab_sliced = torch.stack([labels, labels], -1)[..., 0]
    assert not q_t.is_contiguous() and not lab_sliced.is_contiguous()
    torch.testing.assert_close(
        topk_window_match(q_t, k_cl, lab_sliced, **kw), expected)
    q_cl = query[None].contiguous(memory_format=torch.channels_last)[0]
    assert q_cl.stride(0) == 1
    torch.testing.assert_close(topk_window_match(q_cl, k_cl, labels, **kw),
                               expected)


def test_float32_agrees_with_float64():
    query, keys, labels = random_inputs(2, 5, 64, 9, 11, 3)
    ref = topk_window_match(query, keys, labels, topk=10, radius=3.0,
                            temperature=0.05)
    got = topk_window_match(query.float(), keys.float(), labels.float(),
                            topk=10, radius=3.0, temperature=0.05)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-4)


def test_window_mask():
    m = window_mask(3, 4, 1.5)
    assert m.shape == (12, 12)
    # Position (1, 1): itself, its 4 neighbours and its 4 diagonals (√2).
    assert m[5].sum() == 9
    assert not window_mask(3, 4, 0.0).any()
    assert torch.equal(window_mask(3, 4, 1.5, rows=slice(4, 6)), m[4:6])
    # The boundary is exclusive and evaluated on squared distances.
    assert window_mask(1, 3, math.sqrt(4.5))[0].tolist() == [True] * 3


def test_opcheck_and_export_see_through_the_op():
    """Schema, fake (meta) kernel and dispatch are consistent, so
    torch.compile and torch.export trace the op without running it."""
    needs_native('cpu')
    args = [x[None].float() for x in random_inputs(15, 3, 8, 5, 6, 2)]
    torch.library.opcheck(torch.ops.sfc.topk_window_match.default,
                          (*args, 4, 2.0, 0.07, 1))
    torch.library.opcheck(torch.ops.sfc.topk_window_neighbours.default,
                          (*args[:2], 4, 2.0, 0.07, 1))
    from sfc_plugin.deploy import PropagationStep
    exported = torch.export.export(PropagationStep(4, 2.0, 0.07), tuple(args))
    targets = [str(n.target) for n in exported.graph.nodes]
    assert 'sfc.topk_window_match.default' in targets
    torch.testing.assert_close(exported.module()(*args),
                               PropagationStep(4, 2.0, 0.07)(*args))


ARGS = dict(query=torch.zeros(4, 3, 3), keys=torch.zeros(2, 4, 3, 3),
            key_labels=torch.zeros(2, 2, 3, 3), topk=2, radius=1.0,
            temperature=0.1, unrestricted_keys=1)


@pytest.mark.parametrize('kwargs,match', [
    (dict(query=torch.zeros(4, 3)), 'query must be'),
    (dict(keys=torch.zeros(2, 5, 3, 3)), 'keys .* do not match query'),
    (dict(keys=torch.zeros(2, 4, 3, 2)), 'keys .* do not match query'),
    (dict(keys=torch.zeros(1, 2, 4, 3, 3)), 'keys must be'),
    (dict(key_labels=torch.zeros(3, 2, 3, 3)), 'key_labels .* do not match'),
    (dict(key_labels=torch.zeros(2, 2, 3)), 'key_labels must be'),
    (dict(key_labels=torch.zeros(2, 2, 3, 3, dtype=torch.long)),
     'key_labels must be floating'),
    (dict(query=torch.zeros(4, 3, 3, dtype=torch.half),
          keys=torch.zeros(2, 4, 3, 3, dtype=torch.half)),
     'query is torch.float16; on CPU'),
    (dict(keys=torch.zeros(2, 4, 3, 3, dtype=torch.float64)),
     'query is torch.float32 but keys'),
    (dict(topk=0), 'topk'),
    (dict(radius=-1.0), 'radius'),
    (dict(radius=float('nan')), 'radius'),
    (dict(temperature=0.0), 'temperature'),
    (dict(unrestricted_keys=3), 'unrestricted_keys'),
])
@pytest.mark.parametrize('fn', [topk_window_match, topk_window_match_reference,
                                topk_window_match_dense])
def test_bad_arguments_are_named(fn, kwargs, match):
    args = dict(ARGS, **kwargs)
    q, k, lab = args.pop('query'), args.pop('keys'), args.pop('key_labels')
    with pytest.raises(ValueError, match=match):
        fn(q, k, lab, **args)


@pytest.mark.parametrize('name', ['query', 'keys', 'key_labels'])
@pytest.mark.parametrize('fn',
                         [topk_window_match, topk_window_match_reference])
def test_non_finite_inputs_are_named(fn, name):
    inputs = dict(zip(['query', 'keys', 'key_labels'],
                      random_inputs(16, 2, 8, 4, 5, 2)))
    inputs[name][..., 1, 2] = math.nan
    with pytest.raises(ValueError, match=f'{name} contain NaN'):
        fn(**inputs, topk=3, radius=2.0, temperature=0.1)


def test_native_op_checks_its_own_arguments():
    """Direct torch.ops callers get the same named errors."""
    needs_native('cpu')
    q, k, lab = (x[None] for x in random_inputs(17, 2, 8, 4, 5, 2))
    with pytest.raises(ValueError, match='keys must be'):
        torch.ops.sfc.topk_window_match(q, k[0], lab, 3, 2.0, 0.1, 1)
    with pytest.raises(ValueError, match='unrestricted_keys'):
        torch.ops.sfc.topk_window_match(q, k, lab, 3, 2.0, 0.1, 5)
    with pytest.raises(ValueError, match='float32, float64 or bfloat16'):
        torch.ops.sfc.topk_window_neighbours(q.half(), k.half(), 3, 2.0, 0.1,
                                             1)
