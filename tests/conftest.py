import contextlib
import importlib.util
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'
DAVIS2016 = SHARED_DATA / 'davis2016'

# Tiny FC training for end-to-end tests: 64×64 crops (8×8 maps), batch 2.
TINY_TRAIN_OPTIONS = [
    'train_dataloader.batch_size=2',
    'train_dataloader.num_workers=0',
    'train_dataloader.dataset.num_frames=16',
    'train_dataloader.dataset.img_size=[48,64]',
    'train_dataloader.dataset.pipeline.0.size=64',
    'default_hooks.logger.interval=1',
    'env_cfg.cudnn_benchmark=False',
]


@pytest.fixture(scope='session')
def mmdet():
    """mmdet 3.x, for the tests of the mmdet integration (marked
    ``mmdet``). They run in the second environment of README.md's test
    command (full mmcv + mmdet), where SFC_PLUGIN_REQUIRE_MMDET=1 turns a
    missing mmdet into a failure; elsewhere they are skipped."""
    import importlib

    from sfc_plugin.utils.optional import mmdet_import_error
    error = mmdet_import_error()
    if error is None:
        return importlib.import_module('mmdet')
    if os.environ.get('SFC_PLUGIN_REQUIRE_MMDET') == '1':
        pytest.fail(f'SFC_PLUGIN_REQUIRE_MMDET=1 but {error}')
    pytest.skip(f'runs in the mmdet test environment (README.md): {error}')


@pytest.fixture(scope='session')
def repo() -> Path:
    return REPO


@pytest.fixture(scope='session')
def davis2016() -> Path:
    if not (DAVIS2016 / 'JPEGImages' / '480p').is_dir():
        pytest.fail(f'shared DAVIS-2016 data not found at {DAVIS2016}')
    return DAVIS2016


@pytest.fixture()
def subprocess_env() -> dict:
    """Environment for child processes: the repo importable, one thread."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [str(REPO), env.get('PYTHONPATH', '')])
    env.setdefault('OMP_NUM_THREADS', '1')
    env['PYTHONWARNINGS'] = 'ignore'
    return env


@pytest.fixture(scope='session')
def python() -> str:
    return sys.executable


def load_tool(tool: str):
    """A command-line tool of the repository (``tools/track.py``,
    ``export/to_trt.py``) loaded as a module, for its functions."""
    path = REPO / tool
    spec = importlib.util.spec_from_file_location(
        f'{path.stem}_under_test', path)
    module = importlib.util.module_from_spec(spec)
    # Its siblings, as when run as a script (tools/test.py imports train).
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


_LOADED_TOOLS = {}


def run_in_process(repo, tool, *args) -> subprocess.CompletedProcess:
    """A tool's ``main`` under its error contract (``run_tool``) in this
    process, as a child process would report it: exit status, stdout and
    stderr, without a child's start-up (3-4 s of imports a call). Not for
    what only a child shows: resource limits, signals, and what libraries
    write to the file descriptors themselves (FFmpeg's log)."""
    from sfc_plugin.utils import cli
    path = repo / tool
    if path not in _LOADED_TOOLS:
        _LOADED_TOOLS[path] = load_tool(tool)
    out, err = io.StringIO(), io.StringIO()
    handler, argv0 = signal.getsignal(signal.SIGTERM), sys.argv[0]
    # argparse names the program after sys.argv[0].
    sys.argv[0] = str(path)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.run_tool(_LOADED_TOOLS[path].main, path.name,
                         [str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else int(
            exit_.code is not None)
    finally:
        sys.argv[0] = argv0
        signal.signal(signal.SIGTERM, handler)
    return subprocess.CompletedProcess([str(path), *map(str, args)], code,
                                       out.getvalue(), err.getvalue())
