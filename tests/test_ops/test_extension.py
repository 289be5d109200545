"""The native build: its cache folder, its messages and its locks.

Builds run in child processes against a temporary cache root, so that they
neither reuse nor disturb the cache of the session.
"""
import os
import subprocess

import pytest
import torch

from sfc_plugin.ops import extension

from .test_topk_window_match import NATIVE_DISABLED

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None


def test_cache_tag_depends_on_the_install_location(monkeypatch):
    """Two environments with the same torch and Python (two venvs) must
    not share a build folder and rebuild it over each other."""
    tag = extension._cache_tag(False)
    assert tag.startswith('sfc_plugin_ops-torch') and '+' not in tag
    assert extension._cache_tag(False) == tag
    with monkeypatch.context() as m:
        m.setattr(extension, 'CSRC', '/other/venv/sfc_plugin/ops/csrc')
        assert extension._cache_tag(False) != tag
    with monkeypatch.context() as m:
        m.setattr(torch, '__file__', '/other/venv/torch/__init__.py')
        assert extension._cache_tag(False) != tag
    assert extension._cache_tag(False) == tag


def child_env(subprocess_env, cache):
    env = dict(subprocess_env, SFC_PLUGIN_OPS_CACHE=str(cache))
    env.pop('SFC_PLUGIN_NATIVE_OPS', None)
    env.pop('SFC_PLUGIN_OPS_BUILD_TIMEOUT', None)
    return env


def build_directory(monkeypatch, cache):
    """The folder a child with ``SFC_PLUGIN_OPS_CACHE=cache`` builds in."""
    monkeypatch.setenv('SFC_PLUGIN_OPS_CACHE', str(cache))
    return extension._build_directory(extension._cuda_buildable())


def build(python, env, timeout=600):
    return subprocess.run([python, '-m', 'sfc_plugin.ops', '-q'],
                          capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.mark.skipif(NATIVE_DISABLED, reason='SFC_PLUGIN_NATIVE_OPS=0')
def test_stale_lock_is_removed_and_the_build_announced(
        tmp_path, monkeypatch, python, subprocess_env):
    """A build killed part-way leaves torch's ``lock`` file, on which every
    later process used to wait forever, silently. The one compile of the
    suite (about 20 s)."""
    build_dir = build_directory(monkeypatch, tmp_path)
    stale = os.path.join(build_dir, 'lock')
    open(stale, 'w').close()
    env = child_env(subprocess_env, tmp_path)
    first = build(python, env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().startswith('native kernels loaded for cpu')
    assert f'removed the stale lock {stale}' in first.stderr
    estimate = '2 min' if extension._cuda_buildable() else '20 s'
    assert ('sfc_plugin: compiling the native matching kernels (one time, '
            f'about {estimate}) in {build_dir} ...') in first.stderr
    assert 'sfc_plugin: native kernels compiled in' in first.stderr
    assert not os.path.exists(stale)
    # A cached load says nothing.
    second = build(python, env)
    assert second.returncode == 0, second.stderr
    assert 'sfc_plugin' not in second.stderr
    assert second.stdout.strip().startswith('native kernels loaded for cpu')


@pytest.mark.skipif(fcntl is None, reason='no fcntl: no build lock')
def test_waiting_for_another_build_is_announced_and_bounded(
        tmp_path, monkeypatch, python, subprocess_env):
    """While another live process builds, a process says that it waits,
    and after SFC_PLUGIN_OPS_BUILD_TIMEOUT falls back to pure PyTorch."""
    build_dir = build_directory(monkeypatch, tmp_path)
    env = child_env(subprocess_env, tmp_path)
    env.update(SFC_PLUGIN_OPS_BUILD_TIMEOUT='2', PYTHONWARNINGS='default')
    with open(os.path.join(build_dir, extension.LOCK_FILE), 'a+') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write('4242')
        f.flush()
        done = build(python, env, timeout=60)
    assert done.returncode == 1
    assert ('sfc_plugin: waiting for another process (pid 4242) building '
            f'the native kernels in {build_dir}') in done.stderr
    assert 'using the pure-PyTorch implementation' in done.stderr
    assert done.stdout.startswith(
        'native kernels unavailable: TimeoutError: waited 2 s for another '
        f'process building in {build_dir}')
    assert 'compiling' not in done.stderr
