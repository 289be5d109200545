"""sfc_plugin.utils.checkpoint: every way a checkpoint file can be wrong
gets an error naming it; a good one reads, mapped or not."""
import os
import pickle
import zipfile

import pytest
import torch

from sfc_plugin.utils.checkpoint import check_checkpoint_file, read_checkpoint


class Unsafe:
    """Not a tensor or plain data: weights_only refuses it."""


@pytest.fixture
def good(tmp_path):
    path = tmp_path / 'good.pth'
    torch.save(dict(state_dict=dict(w=torch.arange(4.0)), meta=dict(iter=3)),
               path)
    return path


@pytest.mark.parametrize('mmap', [False, True])
def test_a_checkpoint_reads(good, tmp_path, mmap):
    ckpt = read_checkpoint(str(good), mmap=mmap)
    assert torch.equal(ckpt['state_dict']['w'], torch.arange(4.0))
    assert ckpt['meta'] == dict(iter=3)
    # torch < 1.6's format, a pickle: read whole even when mapping is asked.
    legacy = tmp_path / 'legacy.pth'
    torch.save(dict(w=torch.ones(2)), legacy,
               _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint(legacy, mmap=mmap)['w'], torch.ones(2))


def write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize('make', ['missing', 'text', 'empty', 'cut', 'zip',
                                  'cut-pickle', 'protocol-4'])
def test_a_file_that_is_no_checkpoint_is_named(good, tmp_path, make):
    data = good.read_bytes()
    path = tmp_path / f'{make}.pth'
    if make == 'text':
        write(path, b'notes, not weights\n')
    elif make == 'empty':
        write(path, b'')
    elif make == 'cut':
        write(path, data[:len(data) // 2])
    elif make == 'zip':
        with zipfile.ZipFile(path, 'w') as z:
            z.writestr('readme.txt', 'hello')
    elif make == 'cut-pickle':
        legacy = tmp_path / 'legacy.pth'
        torch.save(dict(w=torch.ones(100)), legacy,
                   _use_new_zipfile_serialization=False)
        write(path, legacy.read_bytes()[:40])
    elif make == 'protocol-4':  # pickle's, which torch.load cannot read
        write(path, pickle.dumps(dict(w=list(range(100))), protocol=4))
    error = FileNotFoundError if make == 'missing' else ValueError
    with pytest.raises(error) as err:
        read_checkpoint(str(path), mmap=True)
    message = str(err.value)
    assert f'"{path}"' in message
    assert ('not found' if make == 'missing' else 'PyTorch checkpoint'
            ) in message
    assert '\n' not in message


class RunsCode:
    """What a malicious checkpoint holds: a call, run when unpickled."""

    def __reduce__(self):
        return (os.system, ('echo loaded',))


@pytest.mark.parametrize('payload', [Unsafe, RunsCode])
def test_objects_other_than_tensors_are_refused_by_name(tmp_path, payload):
    """torch words the two refusals differently ("Unsupported global: ..."
    for a class, "unsupported GLOBAL ... blocked" for a call); both are the
    same error, which never suggests switching weights_only off."""
    path = tmp_path / 'unsafe.pth'
    torch.save(dict(state_dict={}, hub=payload()), path)
    with pytest.raises(RuntimeError) as err:
        read_checkpoint(str(path))
    message = str(err.value)
    assert message.startswith(
        f'Cannot load checkpoint "{path}" safely: it holds objects other '
        'than tensors and plain data')
    assert 'GLOBAL' in message and '\n' not in message
    assert 'weights_only=False' not in message
    assert 'weights_only` set to `False' not in message


def test_check_checkpoint_file_reads_only_the_head(good, tmp_path):
    assert check_checkpoint_file(good) is True  # a zip archive
    legacy = tmp_path / 'legacy.pth'
    torch.save(dict(w=torch.ones(2)), legacy,
               _use_new_zipfile_serialization=False)
    assert check_checkpoint_file(legacy) is False  # a pickle
    with pytest.raises(ValueError, match='neither a whole torch.save archive '
                       'nor a pickle: another kind of file, or one cut short'):
        check_checkpoint_file(write(tmp_path / 'x.pth', b'PK\x03\x04junk'))
