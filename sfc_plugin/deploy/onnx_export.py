"""What every ONNX export of sfc_plugin shares: the exporter call and
all-or-nothing output files."""
import warnings
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from sfc_plugin.utils.fileio import write_json

MIN_OPSET = 17


class ExportError(RuntimeError):
    """An export that cannot start, or whose check failed."""


def write_report(report: Dict, path: str) -> None:
    write_json(report, path, indent=1)


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
