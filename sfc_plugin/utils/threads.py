"""Background threads that yield the CPU to the tracker's threads."""
import os
import sys
import threading

#: Nice increment of the frame-decoding and result-writing threads.
BACKGROUND_NICENESS = 10


def lower_thread_priority(increment: int = BACKGROUND_NICENESS) -> bool:
    """Lowers the calling thread's CPU priority by ``increment`` nice steps.

    Frames are decoded ahead of the tracker and results encoded behind it in
    threads of their own. On a CPU with few cores a parallel region of the
    tracker (OpenMP, one thread per core) can wait at its barrier for a
    worker whose core the scheduler has given to an encoder; niced, the
    background threads yield to the workers whenever both are ready (bf16
    tracking at 480p on 2 cores: 2% more frames/s in three paired runs).
    Threads they start inherit the priority.

    Linux only, where nice is per thread; elsewhere the call would renice
    the whole process, and nothing is done.

    Returns:
        bool: Whether the priority was lowered.
    """
    if not sys.platform.startswith('linux'):
        return False
    thread = threading.get_native_id()
    try:
        nice = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, nice + increment))
    except OSError:  # a sandbox that forbids it: run as we are
        return False
    return True
