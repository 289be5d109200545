"""Host memory left: /proc/meminfo and the cgroup limits, read from fake
trees of the files Linux publishes, and the check built on them."""
import pytest

from sfc_plugin.utils import memory
from sfc_plugin.utils.memory import (
    HostMemoryError,
    available_host_memory,
    check_host_allocation,
    format_bytes,
)

GiB = 2**30


def write(root, path, text):
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def v2_limit(cgroup, folder, limit, usage):
    """A cgroup v2 folder's memory.max and memory.current."""
    prefix = f'{folder}/' if folder else ''
    write(cgroup, prefix + 'memory.max', f'{limit}\n')
    write(cgroup, prefix + 'memory.current', f'{usage}\n')


def meminfo(available_kb, swap_free_kb=0):
    return (f'MemTotal:       32000000 kB\nMemFree:          100000 kB\n'
            f'MemAvailable:   {available_kb} kB\n'
            f'SwapFree:       {swap_free_kb} kB\n')


@pytest.fixture
def roots(tmp_path):
    proc, cgroup = tmp_path / 'proc', tmp_path / 'cgroup'
    write(proc, 'meminfo', meminfo(8 * 2**20))  # 8 GiB
    return proc, cgroup


def left(roots):
    return available_host_memory(str(roots[0]), str(roots[1]))


def test_meminfo_alone_counts_available_memory_and_free_swap(roots):
    write(roots[0], 'self/cgroup', '0::/\n')
    assert left(roots) == 8 * GiB
    write(roots[0], 'meminfo', meminfo(8 * 2**20, swap_free_kb=2**20))
    assert left(roots) == 9 * GiB


def test_cgroup_v2_limit_minus_usage_less_reclaimable_cache(roots):
    proc, cgroup = roots
    write(proc, 'self/cgroup', '0::/user.slice/job\n')
    v2_limit(cgroup, 'user.slice/job', 4 * GiB, 3 * GiB)
    write(cgroup, 'user.slice/job/memory.stat',
          f'anon 1000\ninactive_file {GiB}\nactive_file 5\n')
    assert left(roots) == 2 * GiB  # 4 - (3 - 1)
    # An ancestor's tighter limit applies too; 'max' means none.
    v2_limit(cgroup, 'user.slice', 5 * GiB, 9 * GiB // 2)
    assert left(roots) == GiB // 2
    write(cgroup, 'user.slice/memory.max', 'max\n')
    assert left(roots) == 2 * GiB


def test_cgroup_v2_in_a_container_reads_the_root(roots):
    """With a cgroup namespace the process sees its own cgroup as '/'; with
    none, its path is not in the mounted tree and the root is its cgroup."""
    proc, cgroup = roots
    v2_limit(cgroup, '', 3 * GiB, GiB)
    for line in ('0::/\n', '0::/docker/0123abcd\n'):
        write(proc, 'self/cgroup', line)
        assert left(roots) == 2 * GiB


def test_cgroup_v1_memory_controller(roots):
    proc, cgroup = roots
    write(proc, 'self/cgroup',
          '4:memory:/slurm/job_7\n3:cpu,cpuacct:/slurm/job_7\n0::/\n')
    write(cgroup, 'memory/slurm/job_7/memory.limit_in_bytes', f'{6 * GiB}\n')
    write(cgroup, 'memory/slurm/job_7/memory.usage_in_bytes', f'{5 * GiB}\n')
    write(cgroup, 'memory/slurm/job_7/memory.stat',
          f'cache 10\ntotal_inactive_file {2 * GiB}\n')
    assert left(roots) == 3 * GiB
    # v1's "no limit" is a huge number, not a limit.
    write(cgroup, 'memory/slurm/job_7/memory.limit_in_bytes',
          '9223372036854771712\n')
    assert left(roots) == 8 * GiB


def test_usage_above_the_limit_leaves_nothing(roots):
    proc, cgroup = roots
    write(proc, 'self/cgroup', '0::/\n')
    v2_limit(cgroup, '', GiB, 2 * GiB)
    assert left(roots) == 0


def test_unreadable_or_odd_files_are_skipped(roots, tmp_path):
    proc, cgroup = roots
    write(proc, 'self/cgroup', 'garbage\n0::/a\n')
    v2_limit(cgroup, 'a', 'not a number', '\x00')
    assert left(roots) == 8 * GiB
    write(proc, 'meminfo', 'MemTotal: 5 kB\n')  # no MemAvailable
    assert left(roots) is None
    empty = tmp_path / 'nothing'
    assert available_host_memory(str(empty), str(empty)) is None


def test_this_machine_reports_something_plausible():
    got = available_host_memory()
    assert got is None or 0 < got < 2**50


def test_check_names_the_owner_the_need_and_the_remedy(monkeypatch):
    monkeypatch.setattr(memory, 'available_host_memory', lambda: 3 * GiB)
    check_host_allocation('Owner', 3 * GiB, 'what it holds', 'do less')
    with pytest.raises(
            HostMemoryError,
            match=r'^Owner: what it holds need 4\.5 GiB of host memory, but '
            r'3\.0 GiB is available; do less$'):
        check_host_allocation('Owner', 4.5 * GiB, 'what it holds', 'do less')
    # Where nothing is published (not Linux) nothing is refused.
    monkeypatch.setattr(memory, 'available_host_memory', lambda: None)
    check_host_allocation('Owner', 2**60, 'what it holds', 'do less')


def test_format_bytes():
    assert format_bytes(3 * 2**20) == '3.0 MiB'
    assert format_bytes(1.25 * GiB) == '1.2 GiB'
    assert format_bytes(1023 * 2**20) == '1023.0 MiB'
    assert format_bytes(1800) == '1.8 KiB'
    assert format_bytes(12) == '12 B'
