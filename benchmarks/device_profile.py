"""Where a repeated piece of work spends its time, by ``torch.profiler``.

One helper for the benchmarks that ask it (the training step in
``train_speed.py``, a frame of tracking in ``tracking_overlap.py``): the
wall time per unit of work, the time the GPU is busy in it, the operators
the host dispatches for it (each a kernel launch or more on a GPU, so a
host-bound loop shows as many of them), and the kernels that take the
GPU's time.
"""
import time
from collections import defaultdict
from typing import Callable

import torch


def device_profile(run: Callable[[], None], units: int, device,
                   top: int = 15) -> dict:
    """Profiles one call of ``run``, which does ``units`` units of work
    (training steps, frames) on ``device``; the caller warms up first.

    Args:
        run (callable): The work, called once under the profiler.
        units (int): Units of work ``run`` does, >= 1; every figure is per
            unit.
        device (str | torch.device): Where the work runs; on CUDA the GPU's
            kernels are profiled too, and the device synchronised before
            the clock stops.
        top (int): Kernels listed, the busiest first. Defaults to 15.

    Returns:
        dict: ``wall_ms``; ``host_ops``, the operators the host dispatched
        (outermost calls of any library's operators, ``aten::``,
        ``mkldnn::``, ``sfc::``...; those inside another are its work);
        ``host_op_ms``, the host's time in them (on CUDA dispatch and
        launch, on the CPU the work too; the profiler's own cost per call
        included) and ``host_op_table``, [name, ms, calls] rows, the
        longest first;
        on CUDA ``busy_ms``, the kernels' summed time (overlapping streams
        count twice), and ``kernels``, [name, ms, launches, share of
        busy] rows; on CPU ``busy_ms`` None and no kernels.
    """
    from torch.profiler import ProfilerActivity, profile
    if units < 1:
        raise ValueError(f'device_profile: units must be >= 1, got {units}')
    cuda = torch.device(device).type == 'cuda'
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                           if cuda else [])
    if cuda:
        torch.cuda.synchronize(device)
    # CPU activity also on CUDA: there the kernels are reported as the
    # device events of the CPU ops that launched them.
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        run()
        if cuda:
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
    total_us, launches = defaultdict(float), defaultdict(int)
    host_us, host_calls = defaultdict(float), defaultdict(int)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            total_us[event.name] += event.time_range.elapsed_us()
            launches[event.name] += 1
        elif _is_operator(event) and not (event.cpu_parent is not None
                                          and _is_operator(event.cpu_parent)):
            host_us[event.name] += event.cpu_time_total
            host_calls[event.name] += 1
    busy_us = sum(total_us.values())
    kernels = [[name, us / 1e3 / units, launches[name] / units,
                us / busy_us if busy_us else 0.0]
               for name, us in sorted(total_us.items(),
                                      key=lambda kv: -kv[1])[:top]]
    host = [[name, us / 1e3 / units, host_calls[name] / units]
            for name, us in sorted(host_us.items(),
                                   key=lambda kv: -kv[1])[:top]]
    return dict(wall_ms=1e3 * wall / units,
                host_ops=sum(host_calls.values()) / units,
                host_op_ms=sum(host_us.values()) / 1e3 / units,
                host_op_table=host,
                busy_ms=busy_us / 1e3 / units if cuda else None,
                kernels=kernels)


def _is_operator(event) -> bool:
    """A dispatched operator (``namespace::name``), not a CUDA runtime call
    (``cudaLaunchKernel``) or a Python annotation."""
    return '::' in event.name


def print_host_op_table(profile: dict, unit: str) -> None:
    """Prints a :func:`device_profile` result's host operators as a
    Markdown table, per ``unit``."""
    print(f'| host operator | ms/{unit} | calls/{unit} |')
    print('|---|---:|---:|')
    for name, ms, calls in profile['host_op_table']:
        print(f'| `{name}` | {ms:.3f} | {calls:.1f} |')


def print_kernel_table(profile: dict, unit: str) -> None:
    """Prints a :func:`device_profile` result's kernels as a Markdown table,
    per ``unit`` ('step', 'frame')."""
    print(f'| kernel | ms/{unit} | launches/{unit} | share of busy |')
    print('|---|---:|---:|---:|')
    for name, ms, launches, share in profile['kernels']:
        print(f'| `{name[:90]}` | {ms:.3f} | {launches:.1f} | '
              f'{100 * share:.1f}% |')
