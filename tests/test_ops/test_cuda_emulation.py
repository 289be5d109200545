"""The CUDA kernels, run on the CPU by the SIMT emulation, where the
parametrised class of ``test_topk_window_match.py`` does not reach: frame
groups and their merge on ties, several query tiles and channel chunks,
reduced-precision features, agreement with the C++ CPU kernel, and the
kernel's other configurations (``TileConfig``, ``TensorCoreConfig``,
``Tf32TensorCoreConfig``) against its default or the definition."""
import pytest
import torch

from sfc_plugin.ops import topk_window_neighbours

from .cuda_emulation import (
    config_shared_bytes,
    emulated_neighbours,
    kernel_configs,
    load_emulation,
    planned_groups,
)
from .test_topk_window_match import (
    check_many_ties,
    definition,
    needs_native,
    random_inputs,
)

# The launch's resident blocks, which set the groups of keys: one group; a
# group per frame (the merge kernel's case); and 3 groups of every frame's
# key chunks (CHUNK_GROUPS), whose keys interleave, so that ties fall
# across groups (64 groups: test_ties_across_groups_of_chunks).
GROUPINGS = {'one-group': 1, 'group-per-frame': 10**6, 'chunk-groups': 1}
CHUNK_GROUPS = {'SFC_PLUGIN_GROUP_BY': 'chunks',
                'SFC_PLUGIN_FRAME_GROUPS': '3'}


@pytest.fixture(autouse=True)
def group_by(request, monkeypatch):
    """The groups of chunks of a test's ``grouping`` parameter, if that
    is 'chunk-groups'; groups of frames and the plan's count otherwise."""
    callspec = getattr(request.node, 'callspec', None)
    chunks = callspec and callspec.params.get('grouping') == 'chunk-groups'
    for name, value in CHUNK_GROUPS.items():
        monkeypatch.setenv(name, value if chunks else '')


def check_equals_the_cpu_kernel(query, keys, target_blocks, **kw):
    """The emulated CUDA kernels give the C++ CPU kernel's neighbours on
    float64 batches: the same indices, weights to 1e-12."""
    needs_native('cpu')
    weights, indices = emulated_neighbours(
        query, keys, kw['topk'], kw['radius'], kw['temperature'],
        kw['unrestricted_keys'], target_blocks)
    ref_w, ref_i = topk_window_neighbours(query, keys, **kw)
    assert torch.equal(indices, ref_i)
    torch.testing.assert_close(weights, ref_w, rtol=0, atol=1e-12)


@pytest.mark.parametrize('grouping', GROUPINGS)
@pytest.mark.parametrize('topk', [1, 9, 15, 16, 17, 40])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_many_ties_keep_the_lower_key_index(dtype, topk, grouping):
    """Exact ties everywhere: the kept keys are the first k by (affinity,
    then lower flat index), across groups too."""

    def neighbours(query, keys, **kw):
        weights, indices = emulated_neighbours(
            query[None], keys[None], kw['topk'], kw['radius'],
            kw['temperature'], kw['unrestricted_keys'], GROUPINGS[grouping])
        return weights[0], indices[0]

    check_many_ties(neighbours, dtype, topk)


@pytest.mark.parametrize('groups', ['2', '3', '64'])
@pytest.mark.parametrize('topk', [5, 9])
def test_ties_across_groups_of_chunks(groups, topk, monkeypatch):
    """Groups of chunks interleave the keys' indices: with 2, group 0
    holds the first of frame 0's 3 chunks a tile and the first of frame
    1's 2, group 1 the others. On ties the merge takes the lower index,
    not the earlier group."""
    monkeypatch.setenv('SFC_PLUGIN_GROUP_BY', 'chunks')
    monkeypatch.setenv('SFC_PLUGIN_FRAME_GROUPS', groups)

    def neighbours(query, keys, **kw):
        weights, indices = emulated_neighbours(
            query[None], keys[None], kw['topk'], kw['radius'],
            kw['temperature'], kw['unrestricted_keys'])
        return weights[0], indices[0]

    check_many_ties(neighbours, torch.float32, topk, h=12, w=12)


@pytest.mark.parametrize('grouping', GROUPINGS)
@pytest.mark.parametrize('channels', [3, 37, 64])
def test_copies_of_frame_0_follow_it(channels, grouping):
    """Restricted frames that copy the unrestricted frame 0 score exactly
    as it does: its best key first, then the copies in frame order."""
    h, w = 9, 11
    query, keys, _ = random_inputs(5, 3, channels, h, w, 1)
    keys[2] = keys[1] = keys[0]
    weights, indices = emulated_neighbours(
        query[None].float(), keys[None].float(), 3, 100.0, 0.1, 1,
        GROUPINGS[grouping])
    first = indices[..., 0]
    assert (first < h * w).all()
    assert torch.equal(indices[..., 1], first + h * w)
    assert torch.equal(indices[..., 2], first + 2 * h * w)
    assert (weights == weights[..., :1]).all()


@pytest.mark.parametrize('target_blocks', [1, 3 * 5 * 2 * 2, 10**6])
def test_equals_the_cpu_kernel_over_tiles_and_chunks(target_blocks):
    """Three query tiles (W = 70, the last one partial), channel chunks with
    a tail (C = 45), unrestricted frames longer than a key chunk, two batch
    items; one group, two, and one per frame: the same neighbours as the
    C++ CPU kernel."""
    query, keys, _ = random_inputs(21, 3, 45, 5, 70, 1, batch=2)
    check_equals_the_cpu_kernel(query, keys, target_blocks, topk=15,
                                radius=3.5, temperature=0.07,
                                unrestricted_keys=1)


@pytest.mark.parametrize('grouping', GROUPINGS)
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_reduced_precision_features(dtype, grouping):
    """float16 and bfloat16 features are accumulated in float32 and give
    float32 weights, equal to the definition on the rounded features."""
    t, c, h, w, topk = 3, 40, 7, 9, 6
    query, keys, _ = random_inputs(8, t, c, h, w, 1)
    query, keys = query.to(dtype), keys.to(dtype)
    weights, indices = emulated_neighbours(query[None], keys[None], topk,
                                           2.5, 0.1, 1, GROUPINGS[grouping])
    assert weights.dtype == torch.float32 and indices.dtype == torch.long
    affinity, order, _ = definition(query, keys, topk, 2.5, 1)
    got = affinity.gather(1, indices.reshape(h * w, topk))
    # The chosen keys' affinities are the top k (indices may differ only
    # where float32 sums break a near-tie differently).
    torch.testing.assert_close(got, affinity.gather(1, order[:, :topk]),
                               rtol=0, atol=1e-5)
    expected = torch.softmax(got / 0.1, 1)
    torch.testing.assert_close(weights.reshape(h * w, topk).double(),
                               expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize('groups, by', [('2', 'frames'), ('64', 'frames'),
                                        ('2', 'chunks'), ('5', 'chunks'),
                                        ('64', 'chunks')])
def test_asked_frame_groups_give_the_same_neighbours(groups, by,
                                                     monkeypatch):
    """SFC_PLUGIN_FRAME_GROUPS overrides the launch plan's groups (a plan
    of one group here), of whole frames (the 3 frames cap 64) or of every
    frame's chunks (SFC_PLUGIN_GROUP_BY; a frame here has 1 or 2 chunks a
    tile, so more groups leave some without any): the CPU kernel's
    neighbours whatever the number."""
    monkeypatch.setenv('SFC_PLUGIN_FRAME_GROUPS', groups)
    monkeypatch.setenv('SFC_PLUGIN_GROUP_BY', by)
    query, keys, _ = random_inputs(21, 3, 45, 5, 20, 1, batch=2)
    check_equals_the_cpu_kernel(query, keys, 1, topk=15, radius=3.5,
                                temperature=0.07, unrestricted_keys=1)


@pytest.mark.parametrize('tiles, resident, frames, chunks', [
    # 480p on an H200: float32 (3 blocks per SM), bfloat16 (4).
    (210, 396, 2, 7),
    (210, 528, 3, 5),
    # More tiles than places: groups of chunks still shorten the last wave.
    (420, 396, 1, 4),
    # A wave of whole tiles: nothing to gain.
    (132, 396, 3, 3),
    (1, 1, 1, 1),
    # Beyond the merge's 64 groups: the plan's, capped at launch.
    (12, 396, 33, 33),
    (1, 10**6, 10**6, 10**6),
])
def test_planned_groups(tiles, resident, frames, chunks):
    """Groups of frames: the fewest that fill the device once. Groups of
    chunks (equal blocks): up to 4× that, the count that leaves the last
    wave least idle."""
    assert planned_groups(tiles, resident, False) == frames
    assert planned_groups(tiles, resident, True) == chunks


BAD_GROUPS = "SFC_PLUGIN_FRAME_GROUPS must be an integer from 0 .* to 64"
BAD_GROUP_BY = "SFC_PLUGIN_GROUP_BY must be 'frames' or 'chunks'"


@pytest.mark.parametrize('variable, value, message', [
    *[('SFC_PLUGIN_FRAME_GROUPS', groups, BAD_GROUPS)
      for groups in ['65', '-1', 'two', '1.5', ' 2', '100']],
    *[('SFC_PLUGIN_GROUP_BY', by, BAD_GROUP_BY)
      for by in ['keys', 'Chunks', ' frames', '1']],
])
def test_bad_group_settings_are_refused(variable, value, message,
                                        monkeypatch):
    monkeypatch.setenv(variable, value)
    query, keys, _ = random_inputs(3, 2, 4, 3, 5, 1)
    with pytest.raises(ValueError, match=f"{message}, got '{value}'"):
        emulated_neighbours(query[None], keys[None], 3, 1.0, 0.1, 1)


@pytest.mark.parametrize('grouping', GROUPINGS)
def test_padding_beyond_the_eligible_keys(grouping):
    """With fewer eligible keys than k, in every group: weight 0, index
    -1 after them, and the weights sum to 1."""
    query, keys, _ = random_inputs(12, 3, 4, 3, 3, 1)
    weights, indices = emulated_neighbours(query[None], keys[None], 14, 1.0,
                                           0.1, 1, GROUPINGS[grouping])
    # 9 keys of frame 0 + the query's own position in frames 1 and 2.
    assert (indices[..., :11] >= 0).all()
    assert (indices[..., 11:] == -1).all()
    assert (weights[..., 11:] == 0).all()
    torch.testing.assert_close(weights.sum(-1),
                               torch.ones(1, 3, 3, dtype=torch.float64))


@pytest.mark.parametrize('grouping', GROUPINGS)
def test_windows_taller_than_a_row_batch(grouping):
    """A window reaching more key rows than the union's table holds at once
    (kMaxUnionRows = 128): the rows are listed in batches, and the result
    is still the CPU kernel's."""
    query, keys, _ = random_inputs(31, 2, 4, 150, 3, 1, batch=1)
    check_equals_the_cpu_kernel(query, keys, GROUPINGS[grouping], topk=7,
                                radius=140.0, temperature=0.07,
                                unrestricted_keys=0)


def test_a_map_too_wide_for_the_row_table_is_refused():
    """W beyond what the union's int counters hold: a clear error before
    any launch, naming the limit and the way out."""
    width = 2**31 // 128
    query = torch.zeros(1, 1, 1, width)
    keys = torch.zeros(1, 1, 1, 1, width)
    with pytest.raises(ValueError, match=r'at most \d+ wide, got W=16777216; '
                       'split the call'):
        emulated_neighbours(query, keys, 1, 2.0, 0.1, 1)


# The configurations' tests: each one's blocks have 128 or 256 threads,
# so the inputs stay small.


def test_kernel_configs_are_listed_default_first():
    """The default configuration (what the op runs) comes first; the names
    are unique."""
    configs = kernel_configs()
    assert len(configs) == len(set(configs)) >= 2
    assert configs[0] == '4x8-keys64-micro4x4-prefetch-min3'


def test_the_op_runs_tensor_cores_by_default(monkeypatch):
    """What the CUDA op runs: on sm_80 and later, 16-bit features on the
    first 16-bit tensor-core configuration and float32 ones on the first
    3xTF32 one, unless SFC_PLUGIN_TENSOR_CORES=0; float64 features and
    older devices on the default (CUDA cores); any other value of the
    variable is refused."""
    load_emulation()
    configs = kernel_configs()
    tensor_cores = next(c for c in configs if 'tensorcores' in c)
    tf32 = next(c for c in configs if split_tf32(c))
    op_config = torch.ops.sfc_emulation.op_config
    for value in (None, '1', '0'):
        if value is None:
            monkeypatch.delenv('SFC_PLUGIN_TENSOR_CORES', raising=False)
        else:
            monkeypatch.setenv('SFC_PLUGIN_TENSOR_CORES', value)
        on = value != '0'
        for major in (7, 8, 9, 10):
            want = {
                torch.float16: tensor_cores,
                torch.bfloat16: tensor_cores,
                torch.float32: tf32,
                torch.float64: configs[0],
            } if on and major >= 8 else dict.fromkeys(
                (torch.float16, torch.bfloat16, torch.float32,
                 torch.float64), configs[0])
            for dtype, config in want.items():
                assert op_config(dtype, major) == config, (value, major,
                                                          dtype)
    for value in ('yes', '', ' 1', 'true'):
        monkeypatch.setenv('SFC_PLUGIN_TENSOR_CORES', value)
        if value == '':  # set but empty reads as unset
            assert op_config(torch.float32, 9) == tf32
            continue
        with pytest.raises(ValueError, match='SFC_PLUGIN_TENSOR_CORES must '
                           f"be 0 or 1, got '{value}'"):
            op_config(torch.float32, 9)


def test_a_tensor_core_default_that_does_not_fit_gives_way(monkeypatch):
    """Where a block's shared memory cannot hold the 3xTF32 tiles beside the
    top-k lists (99 KiB on sm_86/sm_89 at a large topk) but can hold the
    CUDA-core ones, the op's own choice falls back to the CUDA-core
    default, same neighbours; a configuration asked for by name is an
    error naming its need instead."""
    configs = kernel_configs()
    tf32 = next(c for c in configs if split_tf32(c))
    topk = 9
    need, default_need = (config_shared_bytes(c, topk)
                          for c in (tf32, configs[0]))
    assert need > default_need
    query, keys, _ = random_inputs(8, 3, 37, 10, 19, 1, batch=1)
    query, keys = query.float(), keys.float()
    args = (query, keys, topk, 3.5, 0.07, 1)
    between = (need + default_need) // 2
    default = emulated_neighbours(*args)
    fallen_back = emulated_neighbours(*args, config=tf32, fallback=True,
                                      shared_bytes=between)
    assert all(torch.equal(a, b) for a, b in zip(fallen_back, default))
    with pytest.raises(ValueError, match=f'topk=9 in Float needs '
                       f'{need // 1024} KiB of shared memory per block; '
                       f'this GPU offers {between // 1024} KiB'):
        emulated_neighbours(*args, config=tf32, shared_bytes=between)
    # Where it fits, the choice stands.
    kept = emulated_neighbours(*args, config=tf32, fallback=True,
                               shared_bytes=need)
    named = emulated_neighbours(*args, config=tf32)
    assert all(torch.equal(a, b) for a, b in zip(kept, named))


def config_dtypes(config):
    """The feature types a configuration is built for."""
    if 'tensorcores' in config:
        return [torch.bfloat16, torch.float16]
    return [torch.float32]


def split_tf32(config):
    """Whether a configuration sums float32 products in 3xTF32."""
    return '-tf32x3-' in config


@pytest.mark.parametrize('grouping', GROUPINGS)
def test_every_config_gives_the_default_neighbours(grouping):
    """Partial tiles of every shape (H = 10, W = 19), a channel tail
    (C = 37), an unrestricted frame longer than a 128-key chunk (batch items
    are the same for every configuration, and tested above): every 16-bit
    tensor-core configuration returns the CUDA-core default's weights and
    indices on the same features exactly (the emulated tensor cores sum
    exact products in the same order as its FMAs), and the default gives
    the C++ CPU kernel's neighbours in float32. 3xTF32 drops a term of each
    product: test_split_tf32_configs_find_the_top_k.
    """
    query, keys, _ = random_inputs(23, 3, 37, 10, 19, 1, batch=1)
    ref_w, ref_i = topk_window_neighbours(query, keys, topk=9, radius=3.5,
                                          temperature=0.07,
                                          unrestricted_keys=1)
    default = {}
    for config in kernel_configs()[1:]:
        if split_tf32(config):
            continue
        for dtype in config_dtypes(config):
            args = (query.to(dtype), keys.to(dtype), 9, 3.5, 0.07, 1,
                    GROUPINGS[grouping])
            if dtype not in default:
                default[dtype] = emulated_neighbours(*args)
            weights, indices = emulated_neighbours(*args, config=config)
            assert torch.equal(indices, default[dtype][1]), (config, dtype)
            assert torch.equal(weights, default[dtype][0]), (config, dtype)
    _, indices = emulated_neighbours(query.float(), keys.float(), 9, 3.5,
                                     0.07, 1, GROUPINGS[grouping])
    assert (indices == ref_i).float().mean() > 0.999


def channels_last_at_an_odd_offset(query):
    """query (B, C, H, W) in channels-last memory one element past its
    storage's start, which the kernel reads in place: no position's
    features start 16-byte aligned."""
    b, c, h, w = query.shape
    storage = query.new_empty(1 + query.numel())
    view = storage[1:].view(b, h, w, c)
    view.copy_(query.permute(0, 2, 3, 1))
    return view.permute(0, 3, 1, 2)


def test_tensor_cores_with_aligned_channels():
    """C = 64, whole slices: the tensor-core tiles are filled by one
    16-byte load a piece (C = 37 above reads value by value). The same
    features at a misaligned address, and a channel count with a partial
    last slice (C = 40), are read value by value: the same neighbours."""
    for channels in (64, 40):
        query, keys, _ = random_inputs(5, 2, channels, 6, 11, 1, batch=1)
        query, keys = query.bfloat16(), keys.bfloat16()
        args = (5, 2.5, 0.1, 1)
        default = emulated_neighbours(query, keys, *args)
        misaligned = channels_last_at_an_odd_offset(query)
        assert misaligned.data_ptr() % 16 and torch.equal(misaligned, query)
        for config in kernel_configs():
            if 'tensorcores' in config:
                for q in (query, misaligned):
                    weights, indices = emulated_neighbours(q, keys, *args,
                                                           config=config)
                    assert torch.equal(indices, default[1]), (config,
                                                              channels)
                    assert torch.equal(weights, default[0]), (config,
                                                              channels)


# Each case runs every 3xTF32 configuration (about 2 s each here).
@pytest.mark.parametrize('channels,grouping', [(37, 'one-group'),
                                               (40, 'group-per-frame'),
                                               (64, 'one-group')])
def test_split_tf32_configs_find_the_top_k(channels, grouping):
    """3xTF32 against the float64 definition on float32 features: the
    chosen keys' affinities are the top k to float32 accuracy (one TF32
    product alone would be off by about 1e-3), the weights their softmax;
    a channel tail (37), a partial last slice (40) and aligned vector
    loads (64). Every 3xTF32 configuration gives the same neighbours: a
    score's products are accumulated in channel order whatever the tile
    or slice."""
    # Partial 4x8 and 8x8 tiles both ways, windows clipped at every border.
    t, h, w, topk, radius, temperature = 3, 7, 11, 9, 3.5, 0.07
    query, keys, _ = random_inputs(41, t, channels, h, w, 1)
    query, keys = query.float(), keys.float()
    affinity, order, _ = definition(query.double(), keys.double(), topk,
                                    radius, 1)
    best = affinity.gather(1, order[:, :topk])
    configs = [c for c in kernel_configs() if split_tf32(c)]
    assert configs
    first = None
    for config in configs:
        weights, indices = emulated_neighbours(
            query[None], keys[None], topk, radius, temperature, 1,
            GROUPINGS[grouping], config)
        assert weights.dtype == torch.float32
        got = affinity.gather(1, indices[0].reshape(h * w, topk))
        torch.testing.assert_close(got, best, rtol=0, atol=1e-6,
                                   msg=config)
        torch.testing.assert_close(
            weights[0].reshape(h * w, topk).double(),
            torch.softmax(got / temperature, 1), rtol=0, atol=2e-5,
            msg=config)
        first = first or (weights, indices)
        assert torch.equal(indices, first[1]), config
        assert torch.equal(weights, first[0]), config


@pytest.mark.parametrize('topk', [1, 17])
def test_every_config_keeps_the_lower_key_index_on_ties(topk):
    for config in kernel_configs():

        def neighbours(query, keys, **kw):
            weights, indices = emulated_neighbours(
                query[None], keys[None], kw['topk'], kw['radius'],
                kw['temperature'], kw['unrestricted_keys'], 10**6, config)
            return weights[0], indices[0]

        # Features in steps of 1/4 are exact in bfloat16 too.
        check_many_ties(neighbours, config_dtypes(config)[0], topk)


def test_an_unknown_config_is_refused_with_the_known_ones():
    query, keys, _ = random_inputs(3, 2, 4, 3, 3, 1)
    with pytest.raises(ValueError, match=r"unknown kernel configuration "
                       r"'2x2'; known: 4x8-keys64-micro4x4-prefetch-min3, "):
        emulated_neighbours(query[None].float(), keys[None].float(), 2, 1.0,
                            0.1, 1, config='2x2')


def test_configs_refuse_the_types_they_are_not_built_for():
    """CUDA-core and 3xTF32 alternatives are built for float32, tensor-core
    ones for float16 and bfloat16 (to bound the build); the default serves
    every type."""
    query, keys, _ = random_inputs(3, 2, 4, 3, 3, 1)
    configs = kernel_configs()
    cuda_cores = next(c for c in configs[1:] if 'tensorcores' not in c)
    tensor_cores = next(c for c in configs if 'tensorcores' in c)
    tf32 = next(c for c in configs if split_tf32(c))
    with pytest.raises(ValueError, match=f"'{tf32}' is built for "
                       'float32 features only, got BFloat16'):
        emulated_neighbours(query[None].bfloat16(), keys[None].bfloat16(),
                            2, 1.0, 0.1, 1, config=tf32)
    with pytest.raises(ValueError, match=f"'{cuda_cores}' is built for "
                       'float32 features only, got Double'):
        emulated_neighbours(query[None], keys[None], 2, 1.0, 0.1, 1,
                            config=cuda_cores)
    with pytest.raises(ValueError, match=f"'{tensor_cores}' takes float16 "
                       'or bfloat16 features, got Float'):
        emulated_neighbours(query[None].float(), keys[None].float(), 2, 1.0,
                            0.1, 1, config=tensor_cores)
    emulated_neighbours(query[None], keys[None], 2, 1.0, 0.1, 1,
                        config=configs[0])
