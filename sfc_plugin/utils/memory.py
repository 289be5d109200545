"""Host memory: what is left, and a check before a large allocation.

On CUDA an allocation that does not fit raises ``torch.OutOfMemoryError``.
On the host it may succeed (Linux overcommits) and the process is killed
later, by the kernel's OOM killer or a container's memory limit, when the
pages are touched: a signal death with no message. Buffers whose size a
user's setting decides (``context_frames``, ``topk``...) are therefore
checked against the memory actually left before they are allocated, so
that an impossible setting ends with an error naming it.
"""
import os
from typing import Optional

#: Where Linux publishes memory figures; a parameter so that tests can
#: point the readers at a fake tree.
PROC_ROOT = '/proc'
CGROUP_ROOT = '/sys/fs/cgroup'
#: cgroup v1 reports "no limit" as a huge page-aligned number.
_NO_CGROUP_LIMIT = 2**60

GiB = 2**30


class HostMemoryError(MemoryError):
    """An allocation that a setting asks for exceeds the host memory left.
    """


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _meminfo_available(proc_root: str) -> Optional[int]:
    """MemAvailable + SwapFree of ``/proc/meminfo``, in bytes."""
    text = _read(os.path.join(proc_root, 'meminfo'))
    if text is None:
        return None
    fields = {}
    for line in text.splitlines():
        name, _, rest = line.partition(':')
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name.strip()] = int(parts[0]) * 1024  # kB
    if 'MemAvailable' not in fields:
        return None
    return fields['MemAvailable'] + fields.get('SwapFree', 0)


def _inactive_file(stat_text: Optional[str], key: str) -> int:
    """Reclaimable page cache of a cgroup's memory.stat: counted in its
    usage, but given back before the limit kills anything."""
    for line in (stat_text or '').splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key and parts[1].isdigit():
            return int(parts[1])
    return 0


def _cgroup_paths(proc_root: str):
    """(version, path) of this process's memory cgroups, from
    ``/proc/self/cgroup``: ``(2, '/a/b')`` for the unified hierarchy,
    ``(1, '/a')`` for a v1 memory controller."""
    text = _read(os.path.join(proc_root, 'self', 'cgroup')) or ''
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(':')
        controllers, _, path = rest.partition(':')
        if hierarchy == '0' and controllers == '':
            yield 2, path
        elif 'memory' in controllers.split(','):
            yield 1, path


#: Per cgroup version: the memory controller's mount below the cgroup
#: root, its limit and usage files, and memory.stat's reclaimable cache.
_CGROUP_FILES = {
    2: ('', 'memory.max', 'memory.current', 'inactive_file'),
    1: ('memory', 'memory.limit_in_bytes', 'memory.usage_in_bytes',
        'total_inactive_file'),
}


def _read_int(path: str) -> Optional[int]:
    text = (_read(path) or '').strip()
    return int(text) if text.isdigit() else None  # None too for 'max'


def _cgroup_available(proc_root: str, cgroup_root: str) -> Optional[int]:
    """Bytes left below the tightest memory limit of this process's
    cgroup and its ancestors (their limits apply too). A cgroup path that
    is not in the mounted tree (a container without a cgroup namespace
    sees its own cgroup as the root) comes down to the root's limit."""
    left = []
    for version, path in _cgroup_paths(proc_root):
        mount, limit_file, usage_file, cache_key = _CGROUP_FILES[version]
        parts = [p for p in path.split('/') if p]
        for depth in range(len(parts), -1, -1):
            folder = os.path.join(cgroup_root, mount, *parts[:depth])
            limit = _read_int(os.path.join(folder, limit_file))
            usage = _read_int(os.path.join(folder, usage_file))
            if limit is None or usage is None or limit >= _NO_CGROUP_LIMIT:
                continue
            stat = _read(os.path.join(folder, 'memory.stat'))
            used = usage - _inactive_file(stat, cache_key)
            left.append(limit - max(used, 0))
    return min(left) if left else None


def available_host_memory(proc_root: Optional[str] = None,
                          cgroup_root: Optional[str] = None
                          ) -> Optional[int]:
    """Bytes this process can still allocate and touch on the host.

    The smaller of the system's ``MemAvailable`` (plus free swap) and what
    is left below the memory limits of the process's cgroups (containers,
    systemd slices, Slurm jobs), their reclaimable page cache counted as
    free.

    Args:
        proc_root (str, optional): Root of procfs. Defaults to ``/proc``.
        cgroup_root (str, optional): Root of the cgroup file systems.
            Defaults to ``/sys/fs/cgroup``.

    Returns:
        int or None: Bytes, or None where the system publishes neither
        (not Linux): callers then skip their checks.
    """
    proc_root = PROC_ROOT if proc_root is None else proc_root
    cgroup_root = CGROUP_ROOT if cgroup_root is None else cgroup_root
    figures = [
        f for f in (_meminfo_available(proc_root),
                    _cgroup_available(proc_root, cgroup_root))
        if f is not None
    ]
    return max(0, min(figures)) if figures else None


def format_bytes(nbytes: float) -> str:
    """``nbytes`` in the largest binary unit it reaches, one decimal."""
    for unit, size in (('GiB', GiB), ('MiB', 2**20), ('KiB', 2**10)):
        if nbytes >= size:
            return f'{nbytes / size:.1f} {unit}'
    return f'{int(nbytes)} B'


def check_host_allocation(owner: str, nbytes: int, what: str,
                          remedy: str) -> None:
    """Refuses a host allocation that the memory left cannot hold.

    Args:
        owner (str): Who allocates, the start of the message.
        nbytes (int): Bytes about to be allocated (and touched).
        what (str): What they hold, with the setting that sized them.
        remedy (str): What to change, e.g. ``'lower topk'``.

    Raises:
        HostMemoryError: ``nbytes`` exceeds :func:`available_host_memory`.
    """
    left = available_host_memory()
    if left is not None and nbytes > left:
        raise host_memory_error(owner, nbytes, left, what, remedy)


def host_memory_error(owner: str, nbytes: int, left: int, what: str,
                      remedy: str) -> HostMemoryError:
    """The error of :func:`check_host_allocation`, for a caller that has
    read the memory left itself (to say in ``remedy`` what would fit)."""
    return HostMemoryError(
        f'{owner}: {what} need {format_bytes(nbytes)} of host memory, but '
        f'{format_bytes(left)} is available; {remedy}')
