import json

import pytest

from sfc_plugin.deploy.provenance import (
    check_exported_from,
    exported_checkpoint,
)
from sfc_plugin.utils.fileio import sha256


@pytest.fixture
def exported(tmp_path):
    """An ONNX file (any bytes: only its digest is read), the checkpoint
    it was made from, and the report export/to_onnx.py writes beside it."""
    model, ckpt = tmp_path / 'fc.onnx', tmp_path / 'fc.pth'
    model.write_bytes(b'onnx bytes')
    ckpt.write_bytes(b'checkpoint bytes')
    report = dict(onnx=dict(path=str(model), sha256=sha256(str(model))),
                  checkpoint=dict(path=str(ckpt), sha256=sha256(str(ckpt))))
    (tmp_path / 'fc.json').write_text(json.dumps(report))
    return model, ckpt, report


def test_report_names_the_checkpoint(exported, tmp_path):
    model, ckpt, report = exported
    assert exported_checkpoint(model) == report['checkpoint']
    assert check_exported_from(model, ckpt)['path'] == str(ckpt)
    other = tmp_path / 'other.pth'
    other.write_bytes(b'other')
    with pytest.raises(ValueError, match='not from .*other.pth'):
        check_exported_from(model, other)


def test_export_without_checkpoint(exported, tmp_path):
    model, ckpt, report = exported
    report['checkpoint'] = None
    (tmp_path / 'fc.json').write_text(json.dumps(report))
    assert exported_checkpoint(model) is None
    with pytest.raises(ValueError, match='without a checkpoint'):
        check_exported_from(model, ckpt)


@pytest.mark.parametrize('field, value', [
    ('onnx', '/some/path.onnx'),   # the shape of to_trt.py's report
    ('onnx', None),
    ('checkpoint', '/some/path.pth'),
    ('checkpoint', dict(path=3, sha256='x')),
    ('checkpoint', dict(path='a.pth', sha256=['x'])),
])
def test_report_of_another_shape_is_named(exported, tmp_path, field, value):
    model, ckpt, report = exported
    report[field] = value
    (tmp_path / 'fc.json').write_text(json.dumps(report))
    with pytest.raises(ValueError,
                       match=rf'fc.json" is not the report .*"{field}"'):
        check_exported_from(model, ckpt)


def test_engine_report_of_another_shape_is_named(exported, tmp_path):
    model, ckpt, _ = exported
    engine = tmp_path / 'fc.engine'
    engine.write_bytes(b'engine bytes')
    # The engine's report would overwrite the ONNX's (same stem, folder):
    # it then lacks the engine's fields.
    with pytest.raises(ValueError, match='TensorRT engine.*"onnx" is dict'):
        exported_checkpoint(engine)
    (tmp_path / 'fc.json').write_text(json.dumps(dict(
        onnx=str(model), onnx_sha256=sha256(str(model)),
        engine_sha256=sha256(str(engine)))))
    with pytest.raises(ValueError, match='"onnx" is str'):
        exported_checkpoint(engine)
