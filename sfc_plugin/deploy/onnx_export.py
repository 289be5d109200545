"""What every ONNX export of sfc_plugin shares: the exporter call and
all-or-nothing output files."""
import contextlib
import logging
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch
from torch import nn

from sfc_plugin.utils.fileio import remove_file, write_json
from sfc_plugin.utils.validation import check_integer

from .provenance import report_paths

MIN_OPSET = 17
#: The dynamo exporter writes opset 18 or newer: 17 gives 18.
DYNAMO_MIN_OPSET = 18


class ExportError(RuntimeError):
    """An export that cannot start, or whose check failed."""


def write_report(report: Dict, path: str) -> None:
    write_json(report, path, indent=1)


def settle_report(report: Dict, model: str, failure: str) -> None:
    """Called with the checked file still at its temporary path (``model``
    is where it goes): if ``report['passed']``, removes a previous passing
    report (which must not describe the new file, should the run stop
    before :func:`publish_report`); else writes the failure report for
    inspection and raises :class:`ExportError` with ``failure``, leaving a
    previous result and its report as they were. Report names:
    :func:`~sfc_plugin.deploy.provenance.report_paths`."""
    paths = report_paths(model)
    if report['passed']:
        remove_file(paths.passed)
        return
    write_report(report, paths.failed)
    raise ExportError(f'{failure}; nothing written but {paths.failed}')


def publish_report(report: Dict, model: str) -> None:
    """Writes the passing report of ``model`` once the checked file is in
    place (so a report always describes the file beside it), and removes a
    failed report of an earlier run."""
    paths = report_paths(model)
    write_report(report, paths.passed)
    remove_file(paths.failed)


#: Exporters: torch.export-based (the default, needs onnxscript) and the
#: deprecated TorchScript one, kept where a graph still needs it (the
#: propagation step's custom node is emitted by a TorchScript symbolic).
EXPORTERS = ('dynamo', 'torchscript')


@contextlib.contextmanager
def _quiet_missing_torchvision() -> Iterator[None]:
    """The dynamo exporter logs one warning per torchvision op it cannot
    register when torchvision is absent; sfc_plugin never uses torchvision,
    so those lines (and only those) are dropped."""
    logger = logging.getLogger('torch.onnx._internal.exporter._registration')
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _dynamic_shapes(inputs: Tuple[torch.Tensor, ...],
                    input_names: Sequence[str],
                    dynamic_axes: Optional[Dict]) -> Optional[tuple]:
    """``dynamic_axes`` (name -> {axis: name}) as torch.export's positional
    ``dynamic_shapes``."""
    if not dynamic_axes:
        return None
    return tuple(
        {axis: torch.export.Dim.DYNAMIC
         for axis in dynamic_axes.get(name, {})} or None
        for name, _ in zip(input_names, inputs))


def export_onnx(module: nn.Module,
                inputs: Tuple[torch.Tensor, ...],
                path: str,
                input_names: Sequence[str],
                output_names: Sequence[str],
                dynamic_axes: Optional[Dict] = None,
                opset: int = MIN_OPSET,
                exporter: str = 'dynamo') -> str:
    """``torch.onnx.export`` of ``module`` into ``path``.

    Args:
        module (nn.Module): In eval mode.
        inputs (tuple[Tensor]): Example inputs (their dtype is the graph's
            precision).
        path (str): Output file.
        input_names, output_names (Sequence[str]): Graph I/O names.
        dynamic_axes (dict, optional): name -> {axis: axis name}.
        opset (int): At least 17; the dynamo exporter writes 18 for 17
            (:func:`written_opset` tells what a file holds). Defaults to
            17.
        exporter (str): 'dynamo' (default) or 'torchscript'.

    Raises:
        ExportError: ``opset`` below 17, an unknown exporter, onnxscript
            missing for the dynamo exporter, or a file of another opset
            than asked (an opset the exporter cannot convert to).
    """
    opset = check_opset(opset)
    if exporter not in EXPORTERS:
        raise ExportError(f'exporter must be one of {EXPORTERS}, got '
                          f'{exporter!r}')
    if exporter == 'torchscript':
        torch.onnx.export(module, inputs, path,
                          input_names=list(input_names),
                          output_names=list(output_names),
                          opset_version=opset, dynamic_axes=dynamic_axes,
                          dynamo=False)
        _check_written_opset(path, opset)
        return path
    try:
        import onnxscript  # noqa: F401 (the dynamo exporter's backend)
    except ImportError:
        raise ExportError('the ONNX exporter needs onnxscript (installed '
                          'with sfc_plugin; pip install onnxscript)') from None
    with _quiet_missing_torchvision():
        torch.onnx.export(module, inputs, path,
                          input_names=list(input_names),
                          output_names=list(output_names),
                          opset_version=max(opset, DYNAMO_MIN_OPSET),
                          dynamic_shapes=_dynamic_shapes(
                              inputs, input_names, dynamic_axes),
                          dynamo=True, external_data=False, verbose=False)
    _check_written_opset(path, max(opset, DYNAMO_MIN_OPSET))
    return path


def written_opset(path: str) -> int:
    """The default-domain opset of the ONNX file at ``path``, what a
    report records (not the opset asked for)."""
    import onnx
    model = onnx.load(path, load_external_data=False)
    versions = [o.version for o in model.opset_import if o.domain in ('',
                                                                     'ai.onnx')]
    if not versions:
        raise ExportError(f'"{path}" imports no default-domain opset')
    return versions[0]


def _check_written_opset(path: str, asked: int) -> None:
    """The dynamo exporter converts to an opset it cannot reach by leaving
    the graph at its own (a warning in its log): an export of opset 1000
    wrote 18. Such a file is refused, not reported as the opset asked."""
    written = written_opset(path)
    if written != asked:
        raise ExportError(
            f'opset {asked} asked, but the exporter wrote opset {written} '
            f'(torch {torch.__version__} cannot convert to {asked}; choose '
            f'an opset from {MIN_OPSET} to one it supports)')


def check_opset(opset) -> int:
    """``opset`` as an int from :data:`MIN_OPSET` to the newest opset the
    installed onnx defines (beyond it its converter fails with a long log),
    or an ExportError."""
    import onnx
    return check_integer(
        'export', 'opset', opset, low=MIN_OPSET,
        high=onnx.defs.onnx_opset_version(),
        why=f' (the newest of onnx {onnx.__version__})', error=ExportError)
