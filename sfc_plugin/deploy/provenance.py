"""Which checkpoint a deployed model was exported from.

A deployed encoder (ONNX file, TensorRT engine) holds its own weights, so a
checkpoint given beside it is not loaded. It must not be recorded as if it
were: it is accepted only when the export reports prove the model was made
from it. ``export/to_onnx.py`` writes ``<name>.json`` beside ``<name>.onnx``
with the SHA-256 of both the ONNX file and the checkpoint;
``export/to_trt.py`` writes ``<name>.json`` beside ``<name>.engine`` with the
engine's and the ONNX file's SHA-256 and the ONNX file's path.
"""
import json
import os
import os.path as osp
from typing import NamedTuple, Optional

from sfc_plugin.utils.fileio import sha256


class ReportPaths(NamedTuple):
    """The two files an export may leave beside its model ``X.onnx`` or
    ``X.engine``."""
    #: ``X.json``: the check passed; it describes the model beside it.
    passed: str
    #: ``X.failed.json``: the check failed; the model was not written.
    failed: str


def report_paths(model: str) -> ReportPaths:
    """Where the export reports of ``model`` are, by its name alone."""
    stem = osp.splitext(model)[0]
    return ReportPaths(stem + '.json', stem + '.failed.json')


def report_owner(path: str, model_suffix: str = '.onnx') -> Optional[str]:
    """The existing model (named ``*model_suffix``) whose export report
    ``path`` is, else None."""
    for suffix in ('.failed.json', '.json'):
        if path.endswith(suffix):
            model = path[:-len(suffix)] + model_suffix
            return model if osp.isfile(model) else None
    return None


def _written_as(value, types) -> bool:
    """Whether a report's field has one of ``types``; a ``{'path',
    'sha256'}`` entry (the files') has strings there."""
    if not isinstance(value, types):
        return False
    return not isinstance(value, dict) or all(
        isinstance(value[k], str) for k in ('path', 'sha256') if k in value)


def _report(model: str, kind: str, fields: dict) -> dict:
    """The export report beside ``model``, checked to have ``fields``
    (name: the types its value may have) as its tool writes them."""
    path = report_paths(model).passed
    try:
        with open(path) as f:
            report = json.load(f)
    except FileNotFoundError:
        raise ValueError(
            f'The {kind} "{model}" has no export report ("{path}") that '
            'says which checkpoint it was made from') from None
    except (OSError, ValueError) as err:
        raise ValueError(f'Cannot read the export report "{path}" of '
                         f'"{model}": {err}') from None
    if not isinstance(report, dict):
        raise ValueError(f'Export report "{path}" is not a JSON object')
    for name, types in fields.items():
        value = report.get(name)
        if not _written_as(value, types):
            raise ValueError(
                f'Export report "{path}" is not the report of a {kind}\'s '
                f'export: its "{name}" is {type(value).__name__}')
    return report


def exported_checkpoint(model: str) -> Optional[dict]:
    """The checkpoint (``{'path', 'sha256'}``) that a deployed model was
    exported from; None where it was exported without one (random init).

    Args:
        model (str | PathLike): An ONNX file of ``export/to_onnx.py`` or a
            TensorRT engine of ``export/to_trt.py``.

    Raises:
        ValueError: A report is missing, unreadable, not of the tool that
            makes such a model, or describes another file than ``model``
            (a model replaced after its export).
    """
    model = os.fspath(model)
    if model.endswith('.engine'):
        report = _report(model, 'TensorRT engine',
                         dict(onnx=str, engine_sha256=str, onnx_sha256=str))
        if report['engine_sha256'] != sha256(model):
            raise ValueError(f'The export report of "{model}" describes '
                             'another engine (SHA-256 differs)')
        onnx = report['onnx']
        if not onnx or not osp.isfile(onnx):
            raise ValueError(f'The ONNX file "{onnx}" that "{model}" was '
                             'built from is gone: its checkpoint cannot be '
                             'traced')
        if report['onnx_sha256'] != sha256(onnx):
            raise ValueError(f'"{onnx}" changed since "{model}" was built '
                             'from it (SHA-256 differs)')
        model = onnx
    report = _report(model, 'ONNX file',
                     dict(onnx=dict, checkpoint=(dict, type(None))))
    if report['onnx'].get('sha256') != sha256(model):
        raise ValueError(f'The export report of "{model}" describes another '
                         'ONNX file (SHA-256 differs)')
    return report['checkpoint']


def check_exported_from(model: str, checkpoint: str) -> dict:
    """Checks that a deployed model was exported from ``checkpoint``.

    Returns:
        dict: ``{'path', 'sha256'}`` of the checkpoint, as the report has it.

    Raises:
        ValueError: It was not (or it cannot be shown), with what to do.
    """
    model, checkpoint = os.fspath(model), os.fspath(checkpoint)
    digest = sha256(checkpoint)
    hint = ('; the deployed model holds its own weights: drop --checkpoint, '
            'or export the model from this checkpoint (export/to_onnx.py '
            '--checkpoint)')
    try:
        source = exported_checkpoint(model)
    except ValueError as err:
        raise ValueError(f'Cannot use checkpoint "{checkpoint}" with '
                         f'"{model}": {err}{hint}') from None
    if source is None:
        raise ValueError(f'"{model}" was exported without a checkpoint '
                         f'(random weights), not from "{checkpoint}"{hint}')
    if source.get('sha256') != digest:
        raise ValueError(f'"{model}" was exported from "{source.get("path")}"'
                         f', not from "{checkpoint}" (SHA-256 differs){hint}')
    return dict(path=checkpoint, sha256=digest)


__all__ = ['check_exported_from', 'exported_checkpoint']
