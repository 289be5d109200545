"""CUDAGraphEncoder: what it asks of the CUDA API, with a fake of it on
CPU tensors (capture, replay, the static input and output, when it captures
again and when it gives up), and on a GPU the real graphs against eager."""
import contextlib

import pytest
import torch
from torch import nn

from sfc_plugin.models import CorrespondenceEncoder, ReducedPrecisionEncoder
from sfc_plugin.models.encoders import cuda_graph
from sfc_plugin.models.encoders.cuda_graph import (
    WARMUP_RUNS,
    CUDAGraphEncoder,
)
from sfc_plugin.utils import register_all_modules

from .test_encoders import R18_L3
from .test_inference_copy import with_running_statistics

register_all_modules()


class FakeCUDA:
    """The parts of ``torch.cuda`` a capture uses. A graph records what the
    encoder registers while it is captured and replays it; every call is
    logged."""

    def __init__(self, fail=None):
        self.fail = fail
        self.log = []
        self.capturing = None
        self.current = self.FakeStream(self, 'current')

    class FakeStream:

        def __init__(self, cuda, name):
            self.cuda, self.name = cuda, name

        def wait_stream(self, other):
            self.cuda.log.append(f'{self.name} waits for {other.name}')

    class CUDAGraph:

        def __init__(self):
            self.recorded = []
            self.replays = 0

        def replay(self):
            self.replays += 1
            for work in self.recorded:
                work()

    def Stream(self, device=None):
        return self.FakeStream(self, 'side')

    def current_stream(self, device=None):
        return self.current

    @contextlib.contextmanager
    def stream(self, stream):
        self.log.append(f'on {stream.name}')
        yield
        self.log.append(f'off {stream.name}')

    @contextlib.contextmanager
    def graph(self, graph, capture_error_mode='global'):
        self.log.append(f'capture ({capture_error_mode})')
        self.capturing = graph
        try:
            if self.fail:
                raise RuntimeError(self.fail)
            yield
        finally:
            self.capturing = None


class Affine(nn.Module):
    """``2x + b``; while captured, registers its work with the graph so
    that a replay recomputes its output in place, as a real graph's
    kernels do."""

    def __init__(self, cuda):
        super().__init__()
        self.cuda = cuda
        self.bias = nn.Parameter(torch.tensor(0.5), requires_grad=False)
        self.calls = []

    def forward(self, x):
        self.calls.append('captured' if self.cuda.capturing else 'eager')
        out = 2 * x + self.bias
        if self.cuda.capturing is not None:
            self.cuda.capturing.recorded.append(
                lambda: out.copy_(2 * x + self.bias))
        return out


def test_captures_once_then_replays_into_fresh_outputs():
    cuda = FakeCUDA()
    graphs = CUDAGraphEncoder(cuda, device_type='cpu')
    encoder = Affine(cuda).eval()
    x = torch.randn(1, 3, 4, 5)
    with torch.no_grad():
        first = graphs(encoder, x)
        assert encoder.calls == ['eager'] * WARMUP_RUNS + ['captured']
        # Warmed up on a side stream after the current one's work, which
        # waits for it before the capture.
        assert cuda.log == ['side waits for current', 'on side', 'off side',
                            'current waits for side',
                            'capture (thread_local)']
        torch.testing.assert_close(first, 2 * x + 0.5)
        y = torch.randn(1, 3, 4, 5)
        second = graphs(encoder, y)
    assert len(encoder.calls) == WARMUP_RUNS + 1  # replayed, not called
    assert graphs._graph.replays == 2
    torch.testing.assert_close(second, 2 * y + 0.5)
    # Each result is a copy: the next replay does not overwrite it.
    torch.testing.assert_close(first, 2 * x + 0.5)
    assert graphs.capture_error is None


def test_captures_again_for_a_new_input_or_encoder():
    cuda = FakeCUDA()
    graphs = CUDAGraphEncoder(cuda, device_type='cpu')
    encoder = Affine(cuda).eval()
    with torch.no_grad():
        graphs(encoder, torch.randn(1, 3, 4, 5))
        graphs(encoder, torch.randn(1, 3, 4, 5))
        captures = [e for e in cuda.log if e.startswith('capture')]
        assert len(captures) == 1
        for x in (torch.randn(1, 3, 4, 6),  # another frame size
                  torch.randn(1, 3, 4, 6, dtype=torch.float64),
                  torch.randn(1, 3, 6, 4).transpose(2, 3)):  # strides
            torch.testing.assert_close(graphs(encoder, x), 2 * x + 0.5)
        assert len([e for e in cuda.log if e.startswith('capture')]) == 4
        # The copy made again after the weights changed: another object.
        other = Affine(cuda).eval()
        other.bias.fill_(-1.0)
        x = torch.randn(1, 3, 4, 6).transpose(2, 3).contiguous()
        torch.testing.assert_close(graphs(other, x), 2 * x - 1.0)
        assert len([e for e in cuda.log if e.startswith('capture')]) == 5
        graphs(other, x)
        assert len([e for e in cuda.log if e.startswith('capture')]) == 5
        graphs.reset()
        graphs(other, x)
        assert len([e for e in cuda.log if e.startswith('capture')]) == 6


def test_a_failed_capture_runs_eagerly_and_warns_once(monkeypatch):
    error = 'operation not permitted when stream is capturing'
    cuda = FakeCUDA(fail=error)
    logged = []
    monkeypatch.setattr(cuda_graph, 'print_log',
                        lambda msg, **kwargs: logged.append(msg))
    graphs = CUDAGraphEncoder(cuda, device_type='cpu')
    encoder = Affine(cuda).eval()
    with torch.no_grad():
        for _ in range(3):
            x = torch.randn(2, 3)
            torch.testing.assert_close(graphs(encoder, x), 2 * x + 0.5)
    assert graphs.capture_error == f'RuntimeError: {error}'
    assert len(logged) == 1 and error in logged[0]
    assert 'runs eagerly' in logged[0]
    assert len([e for e in cuda.log if e.startswith('capture')]) == 1
    assert encoder.calls[-2:] == ['eager', 'eager']


def test_other_devices_and_training_mode_run_eagerly():
    cuda = FakeCUDA()
    graphs = CUDAGraphEncoder(cuda)  # captures CUDA tensors only
    encoder = Affine(cuda).eval()
    x = torch.randn(1, 3)
    with torch.no_grad():
        torch.testing.assert_close(graphs(encoder, x), 2 * x + 0.5)
        encoder.train()
        graphs.device_type = 'cpu'
        torch.testing.assert_close(graphs(encoder, x), 2 * x + 0.5)
    assert cuda.log == [] and encoder.calls == ['eager', 'eager']


def test_copies_start_without_a_graph():
    """A tracker copied with its model (deepcopy, pickling) copies the
    option, not the graph: the copy captures its own."""
    import copy
    import pickle
    cuda = FakeCUDA()
    graphs = CUDAGraphEncoder(cuda, device_type='cpu')
    encoder = Affine(cuda).eval()
    with torch.no_grad():
        graphs(encoder, torch.randn(2, 3))
    assert graphs._graph is not None
    twin = copy.deepcopy(graphs)
    assert twin._graph is None and twin._key is None
    assert twin.device_type == 'cpu' and isinstance(twin.cuda, FakeCUDA)
    plain = pickle.loads(pickle.dumps(CUDAGraphEncoder()))
    assert plain.cuda is torch.cuda and plain.device_type == 'cuda'
    from sfc_plugin.apis import init_tracker, tracker_config
    tracker = init_tracker(tracker_config(
        'fc_davis.py', precision='bf16',
        cfg_options={'model.cuda_graphs': True}), 'cpu')
    assert isinstance(copy.deepcopy(tracker)._cuda_graphs, CUDAGraphEncoder)


def test_the_tracker_option_is_checked():
    from sfc_plugin.apis import init_tracker, tracker_config
    with pytest.raises(ValueError, match='cuda_graphs=True runs the '
                       'reduced-precision copy'):
        init_tracker(tracker_config(
            'fc_davis.py', cfg_options={'model.cuda_graphs': True}), 'cpu')
    with pytest.raises(TypeError, match="cuda_graphs must be True or False, "
                       "got 'yes'"):
        init_tracker(tracker_config(
            'fc_davis.py', precision='bf16',
            cfg_options={'model.cuda_graphs': 'yes'}), 'cpu')
    # On the CPU the option changes nothing.
    tracker = init_tracker(tracker_config(
        'fc_davis.py', precision='bf16',
        cfg_options={'model.cuda_graphs': True}), 'cpu')
    frame = torch.randn(3, 40, 56)
    plain = init_tracker(tracker_config('fc_davis.py', precision='bf16'),
                         'cpu')
    plain.load_state_dict(tracker.state_dict())
    assert torch.equal(tracker.extract_feat(frame), plain.extract_feat(frame))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_cuda_graph_replays_the_eager_features(dtype):
    """On a GPU (``benchmarks/gpu_check.py`` runs this): the replayed
    reduced-precision copy gives the eager copy's features bit for bit,
    frame after frame, and captures again for a new frame size."""
    encoder = with_running_statistics(
        CorrespondenceEncoder(backbone=R18_L3)).cuda()
    copy = ReducedPrecisionEncoder()(encoder, dtype)
    graphs = CUDAGraphEncoder()
    with torch.no_grad():
        for size in ((96, 160), (96, 160), (64, 96)):
            x = torch.randn(1, 3, *size, device='cuda').to(dtype).contiguous(
                memory_format=torch.channels_last)
            assert torch.equal(graphs(copy, x), copy(x))
    assert graphs.capture_error is None and graphs._graph is not None
