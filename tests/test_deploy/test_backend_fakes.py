"""Device, precision and TensorRT-version plumbing of the deployed backends,
against fakes of ONNX Runtime and TensorRT: what the code asks each library
for, and what it does with each answer. (The real libraries run in
test_backends.py and, where TensorRT and a GPU exist, test_to_trt.py.)"""
import contextlib
import types

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from sfc_plugin.deploy import backends
from sfc_plugin.deploy.backends import ONNXRuntimeBackend, TensorRTBackend

from ..conftest import load_tool

pytest.importorskip('onnxruntime')


def tiny_encoder(path, elem=TensorProto.FLOAT, channels=8):
    """An 'encoder': (N, 3, H, W) -> (N, channels, H/8, W/8) by a stride-8
    convolution, in ``elem`` precision."""
    np_dtype = helper.tensor_dtype_to_np_dtype(elem)
    weight = helper.make_tensor(
        'w', elem, (channels, 3, 8, 8),
        np.full((channels, 3, 8, 8), 0.01, np_dtype).tobytes(), raw=True)
    graph = helper.make_graph(
        [helper.make_node('Conv', ['images', 'w'], ['features'],
                          strides=[8, 8])], 'enc',
        [helper.make_tensor_value_info('images', elem,
                                       ['b', 3, 'h', 'w'])],
        [helper.make_tensor_value_info('features', elem,
                                       ['b', channels, 'fh', 'fw'])],
        [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('',
                                                                        17)])
    onnx.save(model, str(path))
    return str(path)


class FakeSession:
    def __init__(self, providers, loaded):
        self.providers, self.loaded, self.bound = providers, loaded, []

    def get_providers(self):
        return self.loaded

    def get_inputs(self):
        return [types.SimpleNamespace(name='images', type='tensor(float)')]

    def get_outputs(self):
        return [types.SimpleNamespace(name='features')]

    def io_binding(self):
        session = self

        class Binding:
            def bind_input(self, *args):
                session.bound.append(('input', ) + args)

            def bind_output(self, *args):
                session.bound.append(('output', ) + args)

        return Binding()


@pytest.fixture()
def fake_ort(monkeypatch, tmp_path):
    """A CUDA machine as ONNX Runtime and torch report it, with control over
    which providers exist and which load."""
    state = dict(available=['CUDAExecutionProvider', 'CPUExecutionProvider'],
                 loads=True, sessions=[])

    def session(model, providers):
        first = providers[0] if isinstance(providers[0], str) else \
            providers[0][0]
        loaded = ([first, 'CPUExecutionProvider'] if state['loads'] else
                  ['CPUExecutionProvider'])
        state['sessions'].append(FakeSession(providers, loaded))
        return state['sessions'][-1]

    import sfc_plugin.deploy.onnxruntime_ops as ops
    monkeypatch.setattr(ops, 'onnxruntime_session', session)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 3)
    backend = ONNXRuntimeBackend(tiny_encoder(tmp_path / 'enc.onnx'))
    backend.ort = types.SimpleNamespace(
        get_available_providers=lambda: state['available'])
    return backend, state


@pytest.mark.parametrize('device, index', [('cuda:1', 1), ('cuda', 3),
                                           ('cuda:0', 0)])
def test_cuda_provider_and_binding_name_the_tracker_device(
        fake_ort, device, index):
    backend, state = fake_ort
    backend.to(device)
    assert backend.device == torch.device('cuda', index)
    assert state['sessions'][-1].providers == [
        ('CUDAExecutionProvider', {'device_id': index}),
        'CPUExecutionProvider'
    ]
    images, out = torch.zeros(1, 3, 8, 8), torch.zeros(1, 8, 1, 1)
    backend.binding(images, out)
    bound = state['sessions'][-1].bound
    assert [(b[0], b[2], b[3]) for b in bound] == [('input', 'cuda', index),
                                                   ('output', 'cuda', index)]
    assert bound[0][5] == (1, 3, 8, 8) and bound[0][6] == images.data_ptr()


def test_same_device_is_not_rebound(fake_ort):
    backend, state = fake_ort
    backend.to('cuda:1')
    backend.to(torch.device('cuda', 1))
    assert len(state['sessions']) == 1
    backend.to('cpu')
    assert state['sessions'][-1].providers == ['CPUExecutionProvider']


def test_cuda_provider_missing_is_an_error_not_a_fallback(fake_ort):
    backend, state = fake_ort
    state['available'] = ['CPUExecutionProvider']
    with pytest.raises(RuntimeError, match='no CUDA execution provider'):
        backend.to('cuda:1')
    assert backend.device is None and state['sessions'] == []


def test_cuda_provider_that_does_not_load_is_an_error(fake_ort):
    backend, state = fake_ort
    state['loads'] = False
    with pytest.raises(RuntimeError, match='did not load for cuda:2'):
        backend.to('cuda:2')
    assert backend.device is None


def test_tracker_moves_its_backend(tmp_path):
    from sfc_plugin.registry import MODELS
    from sfc_plugin.utils import register_all_modules
    from sfc_plugin.utils.config import load_config
    register_all_modules()
    cfg = load_config('fc_davis.py')
    cfg.model.backend = dict(type='onnxruntime',
                             model=tiny_encoder(tmp_path / 'enc.onnx'))
    tracker = MODELS.build(cfg.model)
    assert tracker.backend.device is None  # bound where the tracker goes
    tracker.to('cpu')
    assert tracker.backend.device == torch.device('cpu')
    assert tracker.backend.session.get_providers() == ['CPUExecutionProvider']


def test_fp16_model_is_fed_fp16_and_returns_float32(tmp_path):
    backend = ONNXRuntimeBackend(
        tiny_encoder(tmp_path / 'enc16.onnx', TensorProto.FLOAT16),
        device='cpu')
    assert backend.dtype == torch.float16
    feats = backend(torch.rand(2, 3, 16, 24))
    assert feats.dtype == torch.float32 and feats.shape == (2, 8, 2, 3)


@pytest.mark.parametrize('content, match', [
    (b'\x00garbage' * 10, 'is not an ONNX model'),
])
def test_not_an_onnx_file_is_named(tmp_path, content, match):
    bad = tmp_path / 'bad.onnx'
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        ONNXRuntimeBackend(str(bad), device='cpu')


# -- TensorRT ---------------------------------------------------------------

class Recorder:
    """Records calls; answers from a table (callables or values)."""

    def __init__(self, log, prefix, answers=None):
        self._log, self._prefix, self._answers = log, prefix, answers or {}

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self._log.append((f'{self._prefix}.{name}', args, kwargs))
            answer = self._answers.get(name)
            return answer(*args, **kwargs) if callable(answer) else answer
        return call


def fake_tensorrt(version, log, strongly_typed_flag=True, fp16_flag=True,
                  **answers):
    """A ``tensorrt`` module as the builder sees it, in TensorRT 10 (FP16
    builder flag present) or 11 (weak typing gone) form."""
    flags = types.SimpleNamespace()
    if strongly_typed_flag:
        flags.STRONGLY_TYPED = 1
    builder_flags = types.SimpleNamespace()
    if fp16_flag:
        builder_flags.FP16 = 0
    cache = Recorder(log, 'cache', dict(serialize=lambda: b'cache-bytes'))
    config = Recorder(log, 'config', dict(
        add_optimization_profile=answers.get('add_profile', 0),
        create_timing_cache=lambda b: cache,
        set_timing_cache=answers.get('set_timing_cache', True),
        get_timing_cache=lambda: cache))
    profile = Recorder(log, 'profile', dict(set_shape=None))
    parser = Recorder(log, 'parser', dict(
        parse_from_file=answers.get('parse', True),
        get_error=lambda i: f'error {i}'))
    parser.num_errors = 2
    builder = Recorder(log, 'builder', dict(
        create_network=lambda flags: Recorder(log, 'network'),
        create_builder_config=lambda: config,
        create_optimization_profile=lambda: profile,
        build_serialized_network=answers.get('engine', b'engine-bytes')))
    return types.SimpleNamespace(
        __version__=version,
        Logger=type('Logger', (), {'WARNING': 2,
                                   '__init__': lambda self, level: None}),
        Builder=lambda logger: builder,
        OnnxParser=lambda network, logger: parser,
        NetworkDefinitionCreationFlag=flags, BuilderFlag=builder_flags,
        MemoryPoolType=types.SimpleNamespace(WORKSPACE=0))


@pytest.fixture()
def step_onnx(tmp_path):
    from sfc_plugin.deploy import PropagationStep, export_propagation_step
    return export_propagation_step(
        PropagationStep(4, 2.0, 0.1, form='decomposed'),
        str(tmp_path / 'step.onnx'))


PROFILE = {'query': ((1, 8, 4, 4), (1, 8, 6, 7), (2, 8, 9, 9))}


@pytest.mark.parametrize('version, typed_flag, fp16_flag, flags', [
    ('10.7.0', True, True, 2),  # strongly typed is a flag in 10
    ('11.2.0', True, False, 2),  # 11: weak typing (FP16 flag) removed
    ('11.9.0', False, False, 0),  # a later 11 without the flag at all
])
def test_engine_builds_strongly_typed_on_10_and_11(repo, step_onnx, tmp_path,
                                                   version, typed_flag,
                                                   fp16_flag, flags):
    log = []
    trt = fake_tensorrt(version, log, typed_flag, fp16_flag)
    to_trt = load_tool('export/to_trt.py')
    engine = to_trt.build_engine(trt, step_onnx, PROFILE, 1.0,
                                 str(tmp_path / 'timing.cache'))
    assert engine == b'engine-bytes'
    calls = [c[0] for c in log]
    create = next(c for c in log if c[0] == 'builder.create_network')
    assert create[1] == (flags, )
    assert 'config.set_flag' not in calls  # precision is the ONNX's
    assert ('profile.set_shape', ('query', ) + PROFILE['query'], {}) in log
    assert (tmp_path / 'timing.cache').read_bytes() == b'cache-bytes'


@pytest.mark.parametrize('answers, match', [
    (dict(parse=False), 'cannot parse .*error 0; error 1'),
    (dict(engine=None), 'could not build an engine'),
    (dict(add_profile=-1), 'add the optimisation profile'),
])
def test_every_builder_answer_is_checked(repo, step_onnx, tmp_path, answers,
                                         match):
    trt = fake_tensorrt('10.8.0', [], **answers)
    with pytest.raises(RuntimeError, match=match):
        load_tool('export/to_trt.py').build_engine(
            trt, step_onnx, PROFILE, 1.0, str(tmp_path / 'timing.cache'))
    assert not (tmp_path / 'timing.cache').exists()


def test_mismatched_timing_cache_is_replaced(repo, step_onnx, tmp_path,
                                            capsys):
    log = []
    answers = iter([False, True])
    trt = fake_tensorrt('10.8.0', log,
                        set_timing_cache=lambda *a, **k: next(answers))
    (tmp_path / 'timing.cache').write_bytes(b'another GPU')
    load_tool('export/to_trt.py').build_engine(trt, step_onnx, PROFILE, 1.0,
                                   str(tmp_path / 'timing.cache'))
    assert 'starting a new one' in capsys.readouterr().err
    caches = [c[1] for c in log if c[0] == 'config.create_timing_cache']
    assert caches == [(b'another GPU', ), (b'', )]


@pytest.mark.parametrize('version, ok', [('10.6.1', False), ('10.7.0', True),
                                         ('11.4.0', True), ('12.0.0', False)])
def test_supported_tensorrt_versions(monkeypatch, version, ok):
    import sys
    monkeypatch.setitem(sys.modules, 'tensorrt',
                        types.SimpleNamespace(__version__=version))
    if ok:
        assert backends.require_tensorrt().__version__ == version
    else:
        with pytest.raises(ImportError, match='10.7 to 11.x'):
            backends.require_tensorrt()


class FakeContext:
    def __init__(self, log, accept_shape=True, runs=True):
        self.log, self.accept, self.runs, self.shapes = log, accept_shape, \
            runs, {}

    def set_input_shape(self, name, shape):
        self.log.append(('set_input_shape', name, shape))
        self.shapes[name] = shape
        return self.accept

    def get_tensor_shape(self, name):
        b, _, h, w = self.shapes['images']
        return (b, 8, -(-h // 8), -(-w // 8))

    def set_tensor_address(self, name, address):
        self.log.append(('set_tensor_address', name))
        return True

    def execute_async_v3(self, stream):
        self.log.append(('execute', stream))
        return self.runs


@pytest.fixture()
def trt_backend(monkeypatch):
    """A TensorRTBackend bound to a fake fp16 engine, run on the CPU."""
    log = []
    backend = TensorRTBackend.__new__(TensorRTBackend)
    backend.source, backend.device = '"fake.engine"', torch.device('cpu')
    backend.engine = types.SimpleNamespace(
        get_tensor_profile_shape=lambda name, i: [(1, 3, 64, 64),
                                                  (1, 3, 480, 864),
                                                  (4, 3, 480, 864)])
    backend.context = FakeContext(log)
    backend.inputs, backend.outputs = ['images'], ['features']
    backend.input_name = 'images'
    backend.dtypes = dict(images=torch.float16, features=torch.float16)
    monkeypatch.setattr(torch.cuda, 'current_stream',
                        lambda device=None: types.SimpleNamespace(
                            cuda_stream=7))
    return backend, log


def test_engine_inputs_take_its_precision(trt_backend):
    backend, log = trt_backend
    out = backend.run({'images': torch.rand(2, 3, 240, 432)})
    assert out['features'].dtype == torch.float16
    assert backend(torch.rand(1, 3, 240, 432)).dtype == torch.float32
    assert ('set_input_shape', 'images', (2, 3, 240, 432)) in log
    assert ('execute', 7) in log


@pytest.mark.parametrize('shape', [(1, 3, 32, 432), (5, 3, 240, 432),
                                   (1, 3, 480, 1000), (3, 240, 432)])
def test_frame_outside_the_profile_names_both(trt_backend, shape):
    backend, log = trt_backend
    with pytest.raises(ValueError, match=r'outside the profile of '
                       r'"fake.engine": min \(1, 3, 64, 64\), max '
                       r'\(4, 3, 480, 864\)'):
        backend.run({'images': torch.rand(*shape)})
    assert log == []  # nothing reached TensorRT


@pytest.mark.parametrize('context, match', [
    (dict(accept_shape=False), 'refused input shape'),
    (dict(runs=False), 'failed to run'),
])
def test_context_answers_are_checked(trt_backend, context, match):
    backend, log = trt_backend
    backend.context = FakeContext(log, **context)
    with pytest.raises(RuntimeError, match=match):
        backend.run({'images': torch.rand(1, 3, 240, 432)})


def test_unknown_input_is_named(trt_backend):
    backend, _ = trt_backend
    with pytest.raises(ValueError, match=r"no input \['query'\]"):
        backend.run({'query': torch.rand(1, 3, 240, 432)})


def test_engine_is_loaded_on_the_tracker_device(monkeypatch):
    log = []
    engine = types.SimpleNamespace(
        num_io_tensors=2,
        get_tensor_name=lambda i: ['images', 'features'][i],
        get_tensor_mode=lambda n: n,
        get_tensor_dtype=lambda n: 'half',
        create_execution_context=lambda: FakeContext(log))
    trt = types.SimpleNamespace(
        Logger=type('Logger', (), {'WARNING': 2,
                                   '__init__': lambda self, level: None}),
        Runtime=lambda logger: types.SimpleNamespace(
            deserialize_cuda_engine=lambda data: engine),
        TensorIOMode=types.SimpleNamespace(OUTPUT='features'),
        nptype=lambda t: np.float16)
    entered = []

    @contextlib.contextmanager
    def on_device(device):
        entered.append(device)
        yield

    monkeypatch.setattr(torch.cuda, 'device', on_device)
    backend = TensorRTBackend.__new__(TensorRTBackend)
    backend.trt, backend.source, backend.serialized = trt, 'x', b''
    backend._bind(torch.device('cuda', 1))
    assert entered == [torch.device('cuda', 1)]
    assert backend.inputs == ['images'] and backend.outputs == ['features']
    assert backend.dtypes['images'] == torch.float16
