import json

import pytest

from sfc_plugin.deploy.provenance import (
    check_exported_from,
    exported_checkpoint,
    report_owner,
    report_paths,
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


@pytest.mark.parametrize('model, passed, failed', [
    ('out/fc.onnx', 'out/fc.json', 'out/fc.failed.json'),
    ('out/fc.engine', 'out/fc.json', 'out/fc.failed.json'),
    ('out.v2/fc.fp16.onnx', 'out.v2/fc.fp16.json',
     'out.v2/fc.fp16.failed.json'),
])
def test_report_paths_follow_the_model_name(model, passed, failed):
    assert report_paths(model) == (passed, failed)
    assert report_paths(model).passed == passed


def test_report_owner_is_the_existing_model_beside_it(tmp_path):
    (tmp_path / 'fc.onnx').write_bytes(b'onnx bytes')
    for report in report_paths(str(tmp_path / 'fc.onnx')):
        assert report_owner(report) == str(tmp_path / 'fc.onnx')
        # Named like an engine's report, but no engine is there.
        assert report_owner(report, '.engine') is None
    assert report_owner(str(tmp_path / 'other.json')) is None
    assert report_owner(str(tmp_path / 'fc.onnx')) is None
    assert report_owner(str(tmp_path / 'fc.jsonx')) is None


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
