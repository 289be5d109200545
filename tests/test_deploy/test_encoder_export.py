"""Encoder export: ONNX Runtime reproduces PyTorch on the shared frames."""
import json
import math
import subprocess

import pytest
import torch
from mmengine.config import Config

from sfc_plugin.deploy import (
    ExportError,
    build_encoder,
    export_encoder,
    load_frames,
    onnxruntime_session,
)
from sfc_plugin.deploy.onnx_export import written_opset
from sfc_plugin.models.backbones import ResNet
from sfc_plugin.utils import register_all_modules

pytest.importorskip('onnxruntime')
SIZE = (120, 216)


@pytest.fixture(scope='module')
def frames(davis2016):
    return [str(davis2016 / 'JPEGImages' / '480p' / 'blackswan')]


def config(repo, name):
    register_all_modules()
    return Config.fromfile(str(repo / 'configs' / name))


@pytest.mark.parametrize('name,part,channels', [
    ('fc_davis.py', 'full', 256),
    ('semantic_davis.py', 'full', 1024),
    ('sfc_davis.py', 'full', 1280),
    ('sfc_davis.py', 'fc', 256),
    ('sfc_davis.py', 'semantic', 1024),
])
def test_each_encoder_round_trips(repo, frames, tmp_path, name, part,
                                  channels):
    out = str(tmp_path / 'enc.onnx')
    report = export_encoder(config(repo, name), out, frames, part=part,
                            size=SIZE)
    assert report['passed'] and report['max_abs_diff'] <= 1e-4
    assert report['output_shape'] == [2, channels, 15, 27]
    on_disk = json.loads((tmp_path / 'enc.json').read_text())
    assert on_disk['onnx']['sha256'] == report['onnx']['sha256']
    assert on_disk['versions']['onnxruntime']


def test_dynamic_batch_and_resolution(repo, frames, tmp_path):
    """One graph, other batch sizes and resolutions (odd ones too), equal to
    PyTorch with the same weights (a saved random FC backbone)."""
    ckpt = tmp_path / 'fc.pth'
    torch.save(ResNet(depth=18, num_stages=3, strides=(1, 2, 1),
                      out_indices=(2, )).state_dict(),
               ckpt)
    cfg = config(repo, 'fc_davis.py')
    out = str(tmp_path / 'fc.onnx')
    export_encoder(cfg, out, frames, checkpoint=str(ckpt), size=SIZE)
    encoder = build_encoder(cfg, checkpoint=str(ckpt))
    session = onnxruntime_session(out)
    for size, batch in [((120, 216), 1), ((200, 320), 4), ((97, 131), 1)]:
        images, _ = load_frames(frames, batch, size)
        got = torch.from_numpy(session.run(None,
                                           {'images': images.numpy()})[0])
        with torch.no_grad():
            expected = encoder(images)
        assert got.shape == expected.shape == (batch, 256, -(-size[0] // 8),
                                               -(-size[1] // 8))
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_fp16_export(repo, frames, tmp_path):
    report = export_encoder(config(repo, 'fc_davis.py'),
                            str(tmp_path / 'fc16.onnx'), frames, fp16=True,
                            size=SIZE)
    assert report['precision'] == 'fp16' and report['passed']
    assert report['max_abs_diff'] <= 1e-2


def test_disagreement_writes_nothing_that_looks_complete(repo, frames,
                                                         tmp_path):
    # An earlier result and its report: a failed export leaves the pair.
    (tmp_path / 'a.onnx').write_bytes(b'earlier model')
    (tmp_path / 'a.json').write_text('{"passed": true}')
    with pytest.raises(ExportError, match='disagrees'):
        export_encoder(config(repo, 'fc_davis.py'), str(tmp_path / 'a.onnx'),
                       frames, size=SIZE, atol=0.0)
    assert (tmp_path / 'a.onnx').read_bytes() == b'earlier model'
    assert (tmp_path / 'a.json').read_text() == '{"passed": true}'
    assert json.loads((tmp_path / 'a.failed.json').read_text())[
        'passed'] is False


def test_a_report_is_written_only_beside_the_file_it_describes(tmp_path):
    """A passing check removes the earlier report before the new file is
    moved into place, and its own report follows the file: a run stopped
    between the two leaves a file without a report, never a report of
    another file."""
    from sfc_plugin.deploy.onnx_export import publish_report, settle_report
    model = str(tmp_path / 'a.onnx')
    (tmp_path / 'a.json').write_text('{"passed": true, "earlier": true}')
    (tmp_path / 'a.failed.json').write_text('{"passed": false}')
    report = dict(passed=True, max_abs_diff=0.0)
    settle_report(report, model, 'unused')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.failed.json']
    publish_report(report, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.json']
    assert json.loads((tmp_path / 'a.json').read_text()) == report


def test_checkpoint_that_does_not_match_the_config(repo, frames, tmp_path):
    ckpt = tmp_path / 'r50.pth'
    torch.save(ResNet(depth=50, num_stages=3, strides=(1, 2, 1),
                      out_indices=(2, )).state_dict(),
               ckpt)
    with pytest.raises(ExportError, match='does not fit ResNet'):
        export_encoder(config(repo, 'fc_davis.py'), str(tmp_path / 'x.onnx'),
                       frames, checkpoint=str(ckpt), size=SIZE)
    assert not list(tmp_path.glob('x*'))


def test_checkpoint_outside_the_exported_branch_is_refused(
        repo, frames, tmp_path):
    # sfc_davis.py loads --checkpoint into its fine-grained branch: the
    # semantic branch's export never reads it, so must not record it.
    ckpt = tmp_path / 'fc.pth'
    ckpt.write_bytes(b'')
    with pytest.raises(ExportError,
                       match='not in the semantic branch .*--cfg-options '
                       r'model\.encoder\.semantic\.checkpoint=PATH'):
        export_encoder(config(repo, 'sfc_davis.py'),
                       str(tmp_path / 'x.onnx'), frames, part='semantic',
                       checkpoint=str(ckpt), size=SIZE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['fc.pth']


@pytest.mark.parametrize('kwargs,match', [
    (dict(part='semantic'), 'needs a config with a fused SFC encoder'),
    (dict(opset=13), r'opset must be in \[17, '),
    (dict(checkpoint='/no/such.pth'), 'checkpoint not found'),
    (dict(frames=['/no/such/dir']), 'no such file or folder'),
    (dict(opset=2.5), 'opset must be an integer'),
    (dict(size=(0, 5)), r'size must be two integers \(H, W\) in \[1, 4096\]'),
    (dict(size=(100000, 100000)), r'size must be two integers'),
    (dict(size=(64.5, 64)), r'size must be two integers'),
    (dict(num_frames=0), 'export: num_frames must be >= 1, got 0'),
    (dict(atol=math.nan), 'atol must be a finite number >= 0'),
    (dict(atol=-1.0), 'atol must be a finite number >= 0'),
])
def test_bad_arguments_fail_before_export(repo, frames, tmp_path, kwargs,
                                          match):
    args = dict(frames=frames, size=SIZE)
    args.update(kwargs)
    with pytest.raises(ExportError, match=match):
        export_encoder(config(repo, 'fc_davis.py'), str(tmp_path / 'x.onnx'),
                       **args)
    assert not list(tmp_path.iterdir())


def test_reports_record_the_opset_written(repo, frames, tmp_path):
    """The dynamo exporter writes opset 18 for the default 17, and could
    not convert to 1000 at all: it wrote 18 while the report said 1000.
    Reports now hold the file's own opset, and an opset newer than onnx
    defines is refused before the export."""
    import onnx
    out = tmp_path / 'enc.onnx'
    report = export_encoder(config(repo, 'fc_davis.py'), str(out), frames,
                            size=SIZE)
    assert report['opset'] == written_opset(str(out)) == 18
    newest = onnx.defs.onnx_opset_version()
    with pytest.raises(ExportError,
                       match=rf'opset must be in \[17, {newest}\]'):
        export_encoder(config(repo, 'fc_davis.py'),
                       str(tmp_path / 'x.onnx'), frames, size=SIZE,
                       opset=1000)
    assert not list(tmp_path.glob('x*'))


def test_to_onnx_cli_with_propagation_step(repo, frames, tmp_path, python,
                                           subprocess_env):
    out = tmp_path / 'fc.onnx'
    cmd = [python, str(repo / 'export' / 'to_onnx.py'),
           str(repo / 'configs' / 'fc_davis.py'), '--frames', *frames,
           '--size', *map(str, SIZE), '--out', str(out),
           '--propagation-step', 'custom']
    proc = subprocess.run(cmd, env=subprocess_env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    step = json.loads((tmp_path / 'fc-step-custom.json').read_text())
    assert step['passed'] and step['max_abs_diff_outside_ties'] <= 1e-4
    assert 'topk=10, radius=12' in step['step']
    assert json.loads((tmp_path / 'fc.json').read_text())['passed']
    bad = subprocess.run(cmd[:3] + ['--frames', '/no/such'],
                         env=subprocess_env, capture_output=True, text=True)
    assert bad.returncode != 0 and 'no such file or folder' in bad.stderr
    # Bad propagator settings stop the run before the encoder is written.
    fresh = tmp_path / 'fresh'
    bad = subprocess.run(
        cmd[:-4] + ['--out', str(fresh / 'fc.onnx'), '--propagation-step',
                    'decomposed', '--cfg-options', 'model.propagator.topk=0'],
        env=subprocess_env, capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.strip().endswith('topk must be >= 1, got 0')
    assert not fresh.exists() or not list(fresh.iterdir())


@pytest.mark.parametrize('form', ['custom', 'decomposed'])
def test_fp16_encoder_and_step_export_end_to_end(repo, frames, tmp_path,
                                                 form):
    """Precision is the exported model's: an fp16 encoder's features give
    an fp16 step in either form, checked against the torch op."""
    from sfc_plugin.deploy import export_checked_step, step_from_config
    from sfc_plugin.deploy.onnxruntime_ops import session_input_dtype
    cfg = config(repo, 'fc_davis.py')
    encoder = str(tmp_path / 'fc16.onnx')
    export_encoder(cfg, encoder, frames, fp16=True, size=SIZE)
    out = str(tmp_path / f'step-{form}.onnx')
    report = export_checked_step(step_from_config(cfg, form), encoder, out,
                                 frames, size=SIZE)
    assert report['passed'] and report['precision'] == 'fp16'
    assert report['max_abs_diff_outside_ties'] <= 1e-2
    session = onnxruntime_session(out)
    assert [session_input_dtype(session, i) for i in range(3)] == [
        torch.float16] * 3
    assert session.get_outputs()[0].type == 'tensor(float16)'


def test_to_onnx_checks_every_output_path_first(repo, frames, tmp_path,
                                                capsys):
    """A folder where a report (or the step's) would go is found before
    the export, not after it has written the model."""
    from sfc_plugin.utils.cli import run_tool

    from ..conftest import load_tool
    tool = load_tool('export/to_onnx.py')
    (tmp_path / 'enc-step-custom.json').mkdir()
    with pytest.raises(SystemExit, match='1'):
        run_tool(tool.main, 'to_onnx.py', [
            str(repo / 'configs' / 'fc_davis.py'), '--frames', *frames,
            '--out', str(tmp_path / 'enc.onnx'), '--propagation-step',
            'custom'])
    assert capsys.readouterr().err.strip() == (
        f'to_onnx.py: error: Output "{tmp_path / "enc-step-custom.json"}" is '
        'a folder')
    assert [p.name for p in tmp_path.iterdir()] == ['enc-step-custom.json']


def test_decomposed_step_check_is_sized_for_onnxruntime(repo, frames,
                                                        tmp_path,
                                                        monkeypatch):
    """The export runs the dense graph in ONNX Runtime, whose peak is more
    than twice PyTorch's (DENSE_AFFINITY_COPIES): memory enough for the
    PyTorch form is refused there, before anything is written."""
    import re

    from sfc_plugin.deploy import export_checked_step, step_from_config
    from sfc_plugin.ops import decomposed_bytes
    from sfc_plugin.utils import memory
    cfg = config(repo, 'fc_davis.py')
    encoder = str(tmp_path / 'fc.onnx')
    export_encoder(cfg, encoder, frames, size=SIZE)
    step, out = step_from_config(cfg, 'decomposed'), str(tmp_path / 's.onnx')

    def export_with(left):
        monkeypatch.setattr(memory, 'available_host_memory', lambda: left)
        return export_checked_step(step, encoder, out, frames, size=SIZE)

    with pytest.raises(memory.HostMemoryError) as err:
        export_with(1)
    h, w, t = map(int, re.search(r'of (\d+)×(\d+) features and (\d+) key',
                                 str(err.value)).groups())
    assert str(err.value).startswith('export: the decomposed propagation '
                                     f'step: the dense ({h * w}, {t * h * w})')
    with pytest.raises(memory.HostMemoryError):
        export_with(decomposed_bytes(1, t, h, w, 4, 'torch'))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['fc.json',
                                                          'fc.onnx']
    assert export_with(decomposed_bytes(1, t, h, w, 4, 'onnxruntime'))[
        'passed']


@pytest.mark.parametrize('option, key', [
    ('model.propagator.topK=5', 'LabelPropagator takes no setting "topK": '
     'remove or correct model.propagator.topK'),
    ('model.encoder.depthh=5', 'CorrespondenceEncoder takes no setting '
     '"depthh": remove or correct model.encoder.depthh'),
])
def test_to_onnx_names_a_mistyped_setting_by_its_key(repo, frames, tmp_path,
                                                     capsys, option, key):
    from sfc_plugin.utils.cli import run_tool

    from ..conftest import load_tool
    tool = load_tool('export/to_onnx.py')
    with pytest.raises(SystemExit, match='1'):
        run_tool(tool.main, 'to_onnx.py', [
            str(repo / 'configs' / 'fc_davis.py'), '--frames', *frames,
            '--out', str(tmp_path / 'enc.onnx'), '--propagation-step',
            'decomposed', '--cfg-options', option])
    err = capsys.readouterr().err.strip()
    assert key in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.iterdir())
