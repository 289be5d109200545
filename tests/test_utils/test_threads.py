import os
import sys
import threading

import pytest

from sfc_plugin.apis.inference import _prefetched
from sfc_plugin.apis.results_writer import _BackgroundSink
from sfc_plugin.utils import threads
from sfc_plugin.utils.threads import BACKGROUND_NICENESS, lower_thread_priority

linux = pytest.mark.skipif(not sys.platform.startswith('linux'),
                           reason='per-thread nice is Linux only')


def own_nice():
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def in_thread(fn):
    result = []
    thread = threading.Thread(target=lambda: result.append(fn()))
    thread.start()
    thread.join()
    return result[0]


@linux
def test_lowers_only_the_calling_threads_priority():
    before = own_nice()

    def lowered():
        start = own_nice()
        return lower_thread_priority(), start, own_nice()

    done, start, after = in_thread(lowered)
    assert done and after == min(19, start + BACKGROUND_NICENESS)
    assert own_nice() == before  # the caller's, and the process's, kept
    assert in_thread(lambda: (lower_thread_priority(25), own_nice()))[1] == 19


def test_does_nothing_where_nice_is_per_process(monkeypatch):
    monkeypatch.setattr(threads.sys, 'platform', 'darwin')
    calls = []
    monkeypatch.setattr(threads.os, 'setpriority',
                        lambda *args: calls.append(args))
    assert in_thread(lower_thread_priority) is False
    assert calls == []


def test_a_refused_change_is_not_an_error(monkeypatch):
    if not sys.platform.startswith('linux'):
        pytest.skip('per-thread nice is Linux only')

    def refuse(*args):
        raise PermissionError('not here')

    monkeypatch.setattr(threads.os, 'setpriority', refuse)
    assert in_thread(lower_thread_priority) is False


@linux
def test_decoding_and_writing_threads_yield_to_the_tracker():
    main = own_nice()
    written = []
    sink = _BackgroundSink(lambda: written.append(own_nice()), queue_size=2)
    sink.put(())
    sink.close()

    def frames():
        yield own_nice()

    decoded = list(_prefetched(frames(), depth=1))
    expected = min(19, main + BACKGROUND_NICENESS)
    assert written == [expected] and decoded == [expected]
    assert own_nice() == main
