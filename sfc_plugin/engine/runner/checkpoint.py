"""Loading mmengine checkpoints with ``torch.load(weights_only=True)``.

Since torch 2.6 ``torch.load`` only unpickles tensors and plain containers
unless told otherwise. mmengine's own checkpoints also pickle the message
hub's ``HistoryBuffer`` (NumPy arrays inside), so its ``resume`` fails. Instead
of switching the protection off for every file
(``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``), the few classes that an mmengine
checkpoint is made of are allow-listed, only while a checkpoint is loaded.
"""
import contextlib
import pickle
from typing import Iterator, List

import numpy as np
import torch
from mmengine.logging import HistoryBuffer


def checkpoint_safe_globals() -> List:
    """The non-tensor classes that mmengine's checkpoints contain.

    All are plain data holders: mmengine's ``HistoryBuffer`` and what NumPy
    needs to rebuild the arrays and scalars it holds.
    """
    # numpy 2 moved the array internals from numpy.core to numpy._core.
    multiarray = getattr(np, '_core', None) or np.core
    dtype_classes = [type(np.dtype(t)) for t in (
        np.float64, np.float32, np.float16, np.int64, np.int32, np.uint8,
        np.bool_)]
    return [
        HistoryBuffer,
        np.ndarray,
        np.dtype,
        multiarray.multiarray._reconstruct,
        multiarray.multiarray.scalar,
        *dtype_classes,
    ]


@contextlib.contextmanager
def checkpoint_safe_loading() -> Iterator[None]:
    """Allow-list :func:`checkpoint_safe_globals` for the enclosed loads."""
    with torch.serialization.safe_globals(checkpoint_safe_globals()):
        yield


def explain_unpickling_error(filename: str,
                             err: pickle.UnpicklingError) -> RuntimeError:
    """A clear error for a checkpoint that ``weights_only`` refuses."""
    return RuntimeError(
        f'Cannot load checkpoint "{filename}" with torch.load('
        'weights_only=True): it holds objects other than tensors and the '
        'allow-listed mmengine/NumPy types. Load only checkpoints you trust; '
        f'torch said: {str(err).splitlines()[0]}')
