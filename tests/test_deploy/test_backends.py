"""The tracker on the ONNX Runtime backend agrees with PyTorch."""
import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config

from sfc_plugin.datasets.davis import read_object_mask
from sfc_plugin.deploy import export_encoder, load_frames
from sfc_plugin.models.backbones import ResNet
from sfc_plugin.registry import MODELS
from sfc_plugin.utils import register_all_modules

pytest.importorskip('onnxruntime')
SIZE = (240, 432)  # half of 480p, to keep the suite short
FRAMES_PER_VIDEO = 8


@pytest.fixture(scope='module')
def deployed(repo, davis2016, tmp_path_factory):
    """A random FC checkpoint and its ONNX export."""
    tmp = tmp_path_factory.mktemp('backend')
    ckpt = tmp / 'fc.pth'
    torch.manual_seed(0)
    torch.save(ResNet(depth=18, num_stages=3, strides=(1, 2, 1),
                      out_indices=(2, )).state_dict(), ckpt)
    register_all_modules()
    cfg = Config.fromfile(str(repo / 'configs' / 'fc_davis.py'))
    frames = [str(davis2016 / 'JPEGImages' / '480p' / 'blackswan')]
    export_encoder(cfg, str(tmp / 'fc.onnx'), frames, checkpoint=str(ckpt),
                   size=SIZE)
    return cfg, str(ckpt), str(tmp / 'fc.onnx')


def build_tracker(cfg, ckpt, backend=None):
    model = cfg.model.copy()
    model.encoder.checkpoint = ckpt
    if backend is not None:
        model.backend = backend
    return MODELS.build(model).eval()


def test_onnxruntime_backend_masks_agree_with_torch(deployed, davis2016):
    cfg, ckpt, onnx_path = deployed
    trackers = dict(
        torch=build_tracker(cfg, ckpt),
        ort=build_tracker(cfg, ckpt, dict(type='onnxruntime',
                                          model=onnx_path, device='cpu')))
    assert trackers['ort'].backend is not None
    videos = (davis2016 / 'ImageSets' / 'val.txt').read_text().split()
    agree = total = foreground = 0
    for video in videos:
        frames, files = load_frames(
            [str(davis2016 / 'JPEGImages' / '480p' / video)],
            FRAMES_PER_VIDEO, SIZE)
        mask = read_object_mask(
            str(davis2016 / 'Annotations' / '480p' / video / '00000.png'))
        mask = cv2.resize(mask, SIZE[::-1], interpolation=cv2.INTER_NEAREST)
        preds = {}
        for name, tracker in trackers.items():
            tracker.init(frames[0], torch.from_numpy(mask).long())
            preds[name] = np.stack(
                [tracker.track(f).numpy() for f in frames[1:]])
        assert preds['torch'].shape == (FRAMES_PER_VIDEO - 1, *SIZE)
        agree += (preds['torch'] == preds['ort']).sum()
        foreground += (preds['torch'] > 0).sum()
        total += preds['torch'].size
    assert agree / total >= 0.995, f'{agree / total:.4%} of pixels agree'
    # Not a trivial agreement on empty masks: the objects are tracked.
    assert foreground / total > 0.02


def test_unknown_backend_is_named(deployed):
    cfg, ckpt, _ = deployed
    with pytest.raises(KeyError, match='tensorrtx'):
        build_tracker(cfg, ckpt, dict(type='tensorrtx', engine='a'))


def test_tensorrt_backend_without_tensorrt(deployed):
    pytest.importorskip('torch')
    try:
        import tensorrt  # noqa: F401
        pytest.skip('TensorRT is installed')
    except ImportError:
        pass
    cfg, ckpt, _ = deployed
    with pytest.raises(ImportError, match='needs TensorRT 10'):
        build_tracker(cfg, ckpt, dict(type='tensorrt', engine='x.engine'))


def test_onnx_file_of_another_model_is_refused(tmp_path):
    from sfc_plugin.deploy import PropagationStep, export_propagation_step
    from sfc_plugin.deploy.backends import ONNXRuntimeBackend
    path = export_propagation_step(
        PropagationStep(4, 2.0, 0.1, form='decomposed'),
        str(tmp_path / 'step.onnx'))
    with pytest.raises(ValueError, match='not an sfc_plugin encoder'):
        ONNXRuntimeBackend(path, device='cpu')
