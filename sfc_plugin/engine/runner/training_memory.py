"""The host memory a training run needs, checked before its data workers
start.

A batch size or worker count that the host cannot hold does not fail on
the host: Linux lets the allocations through and the OOM killer ends the
run later, a signal death with no message (``batch_size=96`` on a CPU with
16 GB; ``batch_size=100000`` anywhere). So before the loop starts, the
batches in flight and, for a model on the CPU, the tensors one training
step keeps for its backward are set against the memory left
(:func:`~sfc_plugin.utils.memory.available_host_memory`), from one real
sample of the dataset and two probe forwards of a copy of the model.
"""
import contextlib
import copy
import os
import random
import re
from typing import Iterator, Optional, Tuple

import numpy as np
import torch
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from torch.utils.data import DataLoader, IterableDataset

from sfc_plugin.utils import memory
from sfc_plugin.utils.memory import format_bytes, host_memory_error
from sfc_plugin.utils.validation import check_integer

#: What a CPU training step holds beyond the tensors its forward keeps for
#: the backward (the gradients in flight, the optimiser's temporaries), as
#: a factor on them: 1.16 measured for the FC model (batch 16, crop 256,
#: peak RSS growth over the saved tensors), rounded up.
STEP_OVERHEAD = 1.25
#: A data worker's own memory besides its batches (proportional set size
#: of an FC worker on the shared DAVIS frames: 62 MiB), rounded up.
WORKER_BYTES = 64 * 2**20


def saved_tensor_bytes(model: torch.nn.Module, data) -> int:
    """Bytes of the tensors ``model``'s training forward on ``data`` keeps
    for its backward (each storage counted once).

    Runs ``data_preprocessor`` and the loss forward of mmengine's
    ``BaseModel`` (what ``train_step`` runs before the backward) without a
    backward, on a copy of the model, with the random generators saved and
    restored: the model, its BatchNorm statistics and the run's random
    stream are left as they were.
    """
    probe = copy.deepcopy(model).train()
    storages, total = set(), 0

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = tensor.untyped_storage()
        if tensor.numel() and storage.data_ptr() not in storages:
            storages.add(storage.data_ptr())
            total += storage.nbytes()
        return tensor

    with _random_state_kept(), torch.autograd.graph.saved_tensors_hooks(
            keep, lambda tensor: tensor):
        batch = probe.data_preprocessor(data, True)
        probe._run_forward(batch, mode='loss')
    return total


@contextlib.contextmanager
def _random_state_kept() -> Iterator[None]:
    """Python's, NumPy's and torch's random generators as they were."""
    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


def _batch_bytes(batch) -> int:
    """Bytes of the tensors and arrays in a collated batch."""
    if isinstance(batch, torch.Tensor):
        return batch.untyped_storage().nbytes()
    if isinstance(batch, np.ndarray):
        return batch.nbytes
    if isinstance(batch, dict):
        return sum(_batch_bytes(v) for v in batch.values())
    if isinstance(batch, (list, tuple)):
        return sum(_batch_bytes(v) for v in batch)
    return sum(_batch_bytes(v) for v in getattr(batch, '__dict__', {}).values()
               if isinstance(v, (torch.Tensor, np.ndarray, dict, list)))


def cpu_step_memory(module: torch.nn.Module, collate, sample,
                    processes: int = 1) -> Tuple[float, float]:
    """(fixed, per-sample) host bytes of a training step on the CPU.

    :data:`STEP_OVERHEAD` times the saved tensors, from probe forwards at
    batch 1 and 2 (they grow linearly), plus what the model says its loss
    takes besides per image (``loss_workspace_bytes(data)``, where it has
    one: terms that grow faster than the probes can show). That workspace
    is checked first, so that a crop too large for the host is refused
    before a probe would allocate it.

    Raises:
        HostMemoryError: The probes' workspace exceeds the memory left.
    """
    one = collate([sample])
    workspace_of = getattr(module, 'loss_workspace_bytes', None)
    workspace = workspace_of(one) if callable(workspace_of) else 0
    left = memory.available_host_memory()
    if left is not None and 2 * workspace * processes > left:
        size = one['inputs'].shape[-2:] if isinstance(
            one, dict) and hasattr(one.get('inputs'), 'shape') else None
        crop = f' (views of {size[-1]}×{size[-2]})' if size else ''
        raise host_memory_error(
            'train', 2 * workspace * processes, left,
            f'the loss of 2 images{crop}, the smallest probe of the step',
            'lower the crop size (the pipeline\'s TwoViewRandomResizedCrop '
            'size), or train on a GPU')
    single = saved_tensor_bytes(module, one)
    double = saved_tensor_bytes(module, collate([sample, sample]))
    per_sample = STEP_OVERHEAD * max(double - single, 0) + workspace
    fixed = STEP_OVERHEAD * max(2 * single - double, 0)
    return fixed, per_sample


def local_processes() -> int:
    """Training processes on this host: torchrun's ``LOCAL_WORLD_SIZE``,
    else slurm's ``SLURM_NTASKS_PER_NODE`` (``4``, or ``4(x2)`` for two
    nodes of 4), else 1. Each process checks the whole host's need against
    what is left, since they all draw on it."""
    for name in ('LOCAL_WORLD_SIZE', 'SLURM_NTASKS_PER_NODE'):
        match = re.match(r'\s*(\d+)', os.environ.get(name, ''))
        if match and int(match.group(1)) > 0:
            return int(match.group(1))
    return 1


def check_training_memory(model: torch.nn.Module, dataloader: DataLoader,
                          processes: Optional[int] = None) -> dict:
    """Refuses a training run whose batches and steps the host cannot hold.

    Counted per process: the batches in flight (each worker's
    ``prefetch_factor`` batches and its own :data:`WORKER_BYTES`, one
    batch in the main process and one pinned copy, or one batch without
    workers), sized from the dataset's first sample; for a model on the
    CPU also the step's saved tensors at the batch size, from probe
    forwards at batch 1 and 2 (they grow linearly), times
    :data:`STEP_OVERHEAD`, plus the loss's own workspace
    (:func:`cpu_step_memory`). Times ``processes`` (the training
    processes on this host).

    Args:
        model (nn.Module): The model, wrapped or not.
        dataloader (DataLoader): The training loader, its workers not
            started.
        processes (int, optional): Training processes on this host.
            Defaults to :func:`local_processes`.

    An iterable or empty dataset is not checked (no sample to size a batch
    from).

    Returns:
        dict: The estimate, logged: ``data`` and ``step`` bytes per process
        (step 0 for a model off the CPU), ``processes``, the ``total``
        checked and the bytes ``available`` (None where unknown).

    Raises:
        ValueError: A batch size or worker count that is not an integer
            in range, named.
        HostMemoryError: The total exceeds the memory left; the message
            names the batch size that would fit.
    """
    owner = 'train'
    batch_size = check_integer(owner, 'train_dataloader.batch_size',
                               dataloader.batch_size, low=1)
    workers = check_integer(owner, 'train_dataloader.num_workers',
                            dataloader.num_workers, low=0)
    processes = local_processes() if processes is None else processes
    module = model.module if is_model_wrapper(model) else model
    dataset = dataloader.dataset
    if isinstance(dataset, IterableDataset) or len(dataset) == 0:
        # Nothing to size a batch from (an empty dataset is the dataset's
        # or the sampler's error to report).
        return dict(data=0, step=0, processes=processes, total=0,
                    available=memory.available_host_memory())
    with _random_state_kept():
        sample = dataset[0]
    one = dataloader.collate_fn([sample])
    batches = 1 + int(dataloader.pin_memory) + (
        workers * (dataloader.prefetch_factor or 2) if workers else 0)
    data_fixed = workers * WORKER_BYTES
    data_per_sample = batches * _batch_bytes(one)
    step_fixed = step_per_sample = 0.0
    on_cpu = all(p.device.type == 'cpu' for p in module.parameters())
    if on_cpu:
        step_fixed, step_per_sample = cpu_step_memory(
            module, dataloader.collate_fn, sample, processes)
    fixed = data_fixed + step_fixed
    per_sample = data_per_sample + step_per_sample
    total = processes * (fixed + per_sample * batch_size)
    left = memory.available_host_memory()
    if left is not None and total > left:
        fits = int((left / processes - fixed) // per_sample) if (
            per_sample) else 0
        hint = (f'at most {fits} fit' if fits >= 1 else
                'not even 1 fits with these settings')
        step = ' and the CPU training step' if on_cpu else ''
        hosts = f', × {processes} processes on this host' if (
            processes > 1) else ''
        raise host_memory_error(
            owner, int(total), left,
            f'batch_size={batch_size} at {format_bytes(per_sample)} a '
            f'sample ({batches} batches in flight{step}) and '
            f'{format_bytes(fixed)} besides (num_workers={workers}{step})'
            f'{hosts}',
            f'lower train_dataloader.batch_size ({hint}) or num_workers, '
            'or train on a GPU')
    estimate = dict(data=data_fixed + data_per_sample * batch_size,
                    step=step_fixed + step_per_sample * batch_size,
                    processes=processes, total=total, available=left)
    print_log(
        f'Host memory for training: {format_bytes(total)} (batches in '
        f'flight {format_bytes(estimate["data"])}' +
        (f', CPU training step {format_bytes(estimate["step"])}'
         if on_cpu else '') + f', × {processes} process(es)) of ' +
        ('an unknown amount' if left is None else format_bytes(left)) +
        ' available', logger='current')
    return estimate
