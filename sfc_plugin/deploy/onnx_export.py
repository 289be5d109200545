"""What every ONNX export of sfc_plugin shares: the exporter call and
all-or-nothing output files."""
import contextlib
import hashlib
import json
import os
import os.path as osp
import tempfile
import warnings
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch
from torch import nn

MIN_OPSET = 17


class ExportError(RuntimeError):
    """An export that cannot start, or whose check failed."""


@contextlib.contextmanager
def atomic_output(path: str, suffix: str = '.part') -> Iterator[str]:
    """Yields a temporary path beside ``path`` and moves it to ``path`` only
    if the block succeeds, so an interrupted or failed export never leaves
    a file that looks complete."""
    out_dir = osp.dirname(osp.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=osp.basename(path) + '.', suffix=suffix, dir=out_dir)
    os.close(fd)
    # mkstemp makes the file private (0o600); outputs get the usual mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def write_report(report: Dict, path: str) -> None:
    with atomic_output(path) as tmp:
        with open(tmp, 'w') as f:
            json.dump(report, f, indent=1)


def settle_report(report: Dict, stem: str, failure: str) -> None:
    """Writes ``<stem>.json`` if ``report['passed']``; else writes
    ``<stem>.failed.json`` for inspection and raises :class:`ExportError`
    with ``failure``. Called before the checked file is moved into place,
    so a result never appears without its passing report."""
    if report['passed']:
        write_report(report, stem + '.json')
        return
    write_report(report, stem + '.failed.json')
    raise ExportError(f'{failure}; nothing written but {stem}.failed.json')


def export_onnx(module: nn.Module,
                inputs: Tuple[torch.Tensor, ...],
                path: str,
                input_names: Sequence[str],
                output_names: Sequence[str],
                dynamic_axes: Optional[Dict] = None,
                opset: int = MIN_OPSET) -> str:
    """``torch.onnx.export`` with the TorchScript exporter into ``path``.

    Raises:
        ExportError: ``opset`` below 17.
    """
    if opset < MIN_OPSET:
        raise ExportError(f'opset must be >= {MIN_OPSET}, got {opset}')
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo
        # one, which needs onnxscript; both give the same graphs here.
        warnings.simplefilter('ignore')
        torch.onnx.export(module, inputs, path,
                          input_names=list(input_names),
                          output_names=list(output_names),
                          opset_version=opset, dynamic_axes=dynamic_axes,
                          dynamo=False)
    return path
