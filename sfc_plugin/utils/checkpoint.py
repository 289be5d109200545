"""Reading checkpoints from elsewhere: ``torch.load(weights_only=True)``,
with errors that name the file and say what is wrong with it.

Every reader of the package goes through here: the encoders' and the
detector's weights, and the runner's ``load_from`` and ``resume``.
"""
import os
import os.path as osp
import pickle
import zipfile

import torch

#: What torch's readers raise on an empty, cut or foreign file (their own
#: messages say little: "101", "failed finding central directory").
UNREADABLE_ERRORS = (KeyError, EOFError, ValueError, RuntimeError,
                     IndexError, TypeError, AttributeError)


def check_checkpoint_file(filename: str) -> bool:
    """Refuses a path that is no file, or a file that is no PyTorch
    checkpoint (``torch.save`` writes a zip archive, before torch 1.6 a
    pickle, whose first byte is the protocol marker 0x80).

    Returns:
        bool: Whether it is a zip archive (else a legacy pickle).

    Raises:
        FileNotFoundError: No such file.
        ValueError: Neither a whole zip archive nor a pickle.
    """
    filename = os.fspath(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'Checkpoint file not found: "{filename}"')
    with open(filename, 'rb') as f:
        head = f.read(1)
    is_zip = zipfile.is_zipfile(filename)
    if not is_zip and head != b'\x80':
        raise ValueError(f'Checkpoint "{filename}" is not a PyTorch '
                         'checkpoint (neither a whole torch.save archive nor '
                         'a pickle: another kind of file, or one cut short)')
    return is_zip


def _reason(err: Exception) -> str:
    """The part of torch's message that says what it met: the weights-only
    unpickler's "unsupported ..." line (its wording varies across torch
    versions; its advice to switch ``weights_only`` off is left out), else
    the first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        start = line.lower().find('unsupported')
        if start >= 0:
            return line[start:].split('. Please')[0].rstrip('.')
    return lines[0] if lines else type(err).__name__


def explain_unpickling_error(filename: str,
                             err: pickle.UnpicklingError) -> Exception:
    """A clear error for a checkpoint that ``weights_only`` refuses: a
    RuntimeError for objects other than tensors and plain data (an
    "unsupported global", a class or a function such as ``os.system``),
    else that of :func:`unreadable_checkpoint_error`."""
    reason = _reason(err)
    if not reason.lower().startswith('unsupported global'):
        return unreadable_checkpoint_error(filename, err)
    return RuntimeError(
        f'Cannot load checkpoint "{filename}" safely: it holds objects other '
        'than tensors and plain data, which loading would run as code (a '
        'checkpoint written by plain mmengine pickles its message hub; '
        'sfc_plugin\'s SFCRunner writes loadable ones). Only if you trust '
        'the file, re-save its "state_dict" and load that. torch.load('
        f'weights_only=True) met: {reason}')


def unreadable_checkpoint_error(filename: str,
                                err: Exception) -> ValueError:
    """A clear error for a checkpoint file that torch cannot read."""
    return ValueError(
        f'Checkpoint "{filename}" is not a readable PyTorch checkpoint '
        f'(empty, cut short, or another kind of file): torch.load failed '
        f'with {type(err).__name__}: {_reason(err)}')


def read_checkpoint(filename: str, mmap: bool = False):
    """``torch.load(weights_only=True)`` of a checkpoint, to the CPU, with
    errors that name the file.

    Args:
        filename (str): The checkpoint.
        mmap (bool): Map the file's tensors instead of reading them (a zip
            archive only; a legacy pickle is read). Defaults to False.

    Raises:
        FileNotFoundError: No such file.
        RuntimeError: It holds objects other than tensors and plain data.
        ValueError: It is not a PyTorch checkpoint at all (a text file, an
            empty or cut file).
    """
    filename = os.fspath(filename)
    is_zip = check_checkpoint_file(filename)
    try:
        return torch.load(filename, map_location='cpu', weights_only=True,
                          mmap=mmap and is_zip)
    except pickle.UnpicklingError as err:
        raise explain_unpickling_error(filename, err) from err
    except UNREADABLE_ERRORS as err:
        raise unreadable_checkpoint_error(filename, err) from None
