"""Checkpoints that ``torch.load(weights_only=True)`` can read.

Since torch 2.6 ``torch.load`` only unpickles tensors and plain containers
unless told otherwise. mmengine's checkpoints also pickle the message hub's
``HistoryBuffer`` objects, whose state holds NumPy arrays and references to
functions (reached through ``builtins.getattr``): allow-listing those would
let any checkpoint call ``getattr`` on anything, and turning the protection
off (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``) drops it for every file.

Instead, :class:`~sfc_plugin.engine.runner.SFCRunner` writes the message hub
as plain data (tensors, numbers, strings) and turns it back into
``HistoryBuffer`` objects on load, so its checkpoints load with
``weights_only=True`` and nothing allow-listed.
"""
from typing import Any

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

_BUFFER_TAG = '__history_buffer__'


def _to_plain(value: Any) -> Any:
    if isinstance(value, HistoryBuffer):
        logs, counts = value.data
        return {
            _BUFFER_TAG: True,
            'log_history': torch.from_numpy(np.array(logs, dtype=np.float64)),
            'count_history': torch.from_numpy(
                np.array(counts, dtype=np.float64)),
            'max_length': int(value.max_length),
        }
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return type(value)((k, _to_plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_to_plain(v) for v in value)
    return value


def _from_plain(value: Any) -> Any:
    if isinstance(value, dict) and value.get(_BUFFER_TAG, False):
        return HistoryBuffer(
            log_history=value['log_history'].numpy(),
            count_history=value['count_history'].numpy(),
            max_length=value['max_length'])
    if isinstance(value, dict):
        return type(value)((k, _from_plain(v)) for k, v in value.items())
    return value


def encode_message_hub(checkpoint: dict) -> None:
    """Makes ``checkpoint['message_hub']`` plain data, in place."""
    if 'message_hub' in checkpoint:
        checkpoint['message_hub'] = _to_plain(checkpoint['message_hub'])


def decode_message_hub(checkpoint: dict) -> None:
    """Undoes :func:`encode_message_hub`, in place."""
    if 'message_hub' in checkpoint:
        checkpoint['message_hub'] = _from_plain(checkpoint['message_hub'])
