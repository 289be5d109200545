import math
import subprocess

import cv2
import numpy as np
import pytest
import torch
from scipy.io import savemat

from sfc_plugin.datasets import JHMDBDataset, read_joint_positions
from sfc_plugin.evaluation.metrics import (
    JHMDBPCKMetric,
    PartIoUMetric,
    confusion_matrix,
    normalized_joint_errors,
)
from sfc_plugin.models import KeypointCodec, MaskCodec

from .davis_fixtures import moving_squares, write_davis


def write_jhmdb(root, num_frames=4, h=60, w=80, num_joints=15):
    """One JHMDB video: PNG frames and joint_positions.mat (1-based)."""
    frames = root / 'Rename_Images' / 'walk' / 'v1'
    frames.mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = rng.uniform([10, 10], [w - 20, h - 20], size=(num_joints, 2))
    joints = np.stack([base + [2 * t, 0] for t in range(num_frames)])
    for t in range(num_frames):
        img = np.full((h, w, 3), 30, np.uint8)
        for x, y in joints[t]:
            cv2.circle(img, (int(x), int(y)), 2, (200, 80, 40), -1)
        cv2.imwrite(str(frames / f'{t + 1:05d}.png'), img)
    mat_dir = root / 'joint_positions' / 'walk' / 'v1'
    mat_dir.mkdir(parents=True)
    # pos_img: (2, J, T), MATLAB 1-based.
    savemat(str(mat_dir / 'joint_positions.mat'),
            {'pos_img': joints.transpose(2, 1, 0) + 1.0})
    (root / 'jhmdb_val.txt').write_text(
        'Rename_Images/walk/v1 joint_positions/walk/v1/joint_positions.mat\n')
    return joints


def test_jhmdb_reader_and_dataset(tmp_path):
    joints = write_jhmdb(tmp_path)
    assert np.allclose(
        read_joint_positions(
            str(tmp_path / 'joint_positions/walk/v1/joint_positions.mat')),
        joints)
    ds = JHMDBDataset(data_root=str(tmp_path))
    assert len(ds) == 4
    info = ds.get_data_info(2)
    assert info['frame_id'] == 2 and info['video_length'] == 4
    assert np.allclose(info['gt_joints'], joints[2])
    (tmp_path / 'bad.txt').write_text('only-one-field\n')
    with pytest.raises(ValueError, match='line 1 of'):
        JHMDBDataset(data_root=str(tmp_path), ann_file='bad.txt')


def test_keypoint_codec_round_trip():
    codec = KeypointCodec(sigma=0.5, stride=8, topk=3)
    joints = torch.tensor([[20.0, 30.0], [100.5, 60.0], [3.5, 3.5]])
    soft = codec.encode(joints, (16, 16), (128, 128))
    assert soft.shape == (4, 16, 16)
    assert torch.all(soft[-1] >= 0) and torch.all(soft[-1] <= 1)
    decoded = codec.decode(soft, (128, 128))
    # Top-3 of a Gaussian of 0.5 cells: within a cell of the joint.
    assert torch.all((decoded - joints).norm(dim=1) < 8)
    centre = torch.tensor([[35.5, 35.5]])  # exactly the centre of cell 4
    assert torch.allclose(codec.decode(codec.encode(centre, (8, 8),
                                                    (64, 64)), (64, 64)),
                          centre, atol=1.0)


def test_mask_codec_classes():
    labels = torch.tensor([[0, 1], [2, 2]])
    assert MaskCodec().encode(labels, (2, 2), (2, 2)).shape[0] == 3
    assert MaskCodec(num_classes=20).encode(labels, (1, 1), (2, 2)).shape[
        0] == 20
    with pytest.raises(ValueError, match='out of range'):
        MaskCodec(num_classes=2).encode(labels, (1, 1), (2, 2))


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_classes=0), r'num_classes must be in \[2, 256\]'),
    (dict(num_classes=10**9), r'num_classes must be in \[2, 256\]'),
    (dict(num_classes=2.5), 'num_classes must be an integer'),
    (dict(num_classes='20'), 'num_classes must be an integer'),
])
def test_mask_codec_refuses_bad_class_counts(kwargs, match):
    """num_classes sizes a one-hot map per pixel: 10**9 of them once asked
    for terabytes at the first frame."""
    with pytest.raises(ValueError, match=f'^MaskCodec: {match}'):
        MaskCodec(**kwargs)


@pytest.mark.parametrize('kwargs, match', [
    (dict(sigma=0), 'sigma must be a finite number >= 0.001'),
    (dict(sigma=math.nan), 'sigma must be a finite number >= 0.001'),
    (dict(sigma=math.inf), 'sigma must be a finite number >= 0.001'),
    # Its square underflowed: NaN heat maps, blamed on the labels.
    (dict(sigma=1e-200), 'sigma must be a finite number >= 0.001'),
    (dict(sigma='wide'), 'sigma must be a real number'),
    (dict(stride=0), 'stride must be >= 1'),
    (dict(stride=2.5), 'stride must be an integer'),
    (dict(topk=0), 'topk must be >= 1'),
    (dict(topk=2.5), 'topk must be an integer'),
    (dict(topk=None), 'topk must be an integer'),
])
def test_keypoint_codec_refuses_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=f'^KeypointCodec: {match}'):
        KeypointCodec(**kwargs)


def test_keypoint_codec_decodes_with_topk_beyond_the_grid():
    codec = KeypointCodec(topk=10**12)
    soft = codec.encode(torch.tensor([[20.0, 30.0]]), (4, 4), (32, 32))
    assert torch.isfinite(codec.decode(soft, (32, 32))).all()


@pytest.mark.parametrize('block_bytes', [1, 3 * 4 * 37 * 53, 2**30])
def test_mask_codec_encodes_ids_in_blocks_exactly(monkeypatch, block_bytes):
    """A block of ids at a time (one, three, all): the values the one-hot
    of every id at once gave, bit for bit."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 21, (37, 53), generator=gen, dtype=torch.uint8)
    once = torch.nn.functional.interpolate(
        torch.nn.functional.one_hot(labels.long(), 21).permute(
            2, 0, 1).float()[None], size=(5, 7), mode='bilinear',
        align_corners=False)[0]
    monkeypatch.setattr(MaskCodec, 'ONE_HOT_BYTES', block_bytes)
    got = MaskCodec().encode(labels, (5, 7), (37, 53))
    assert torch.equal(got, once)
    assert torch.equal(MaskCodec(num_classes=30).encode(labels, (5, 7),
                                                        (37, 53))[:21], once)


def test_mask_codec_refuses_negative_ids():
    with pytest.raises(ValueError, match='label ids must be >= 0, got -1'):
        MaskCodec().encode(torch.tensor([[0, -1]]), (1, 1), (1, 2))


def test_keypoint_heat_maps_beyond_the_host_memory_are_refused(monkeypatch):
    from sfc_plugin.utils import memory
    monkeypatch.setattr(memory, 'available_host_memory', lambda: 2**20)
    codec = KeypointCodec()
    joints = torch.rand(2000, 2) * 100
    with pytest.raises(memory.HostMemoryError,
                       match=r'^KeypointCodec: the heat maps of 2000 '
                       r'keypoints on the 16×16 feature grid need 5\.9 MiB'
                       r'.*; track fewer keypoints$'):
        codec.encode(joints, (16, 16), (128, 128))
    assert codec.encode(joints[:10], (16, 16), (128, 128)).shape == (11, 16,
                                                                     16)


def test_pck_hand_built():
    gt = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 20.0]])  # bbox 10 × 20
    pred = gt + np.array([[1.0, 0.0], [0.0, 3.0], [5.0, 0.0]])
    assert np.allclose(normalized_joint_errors(pred, gt), [0.05, 0.15, 0.25])
    metric = JHMDBPCKMetric()
    metric.process(None, [
        dict(frame_id=0, pred_joints=pred * 0, gt_joints=gt),  # skipped
        dict(frame_id=1, pred_joints=pred, gt_joints=gt),
    ])
    res = metric.compute_metrics(metric.results)
    assert res == {'PCK@0.1': pytest.approx(1 / 3),
                   'PCK@0.2': pytest.approx(2 / 3)}


def test_part_iou_hand_built(tmp_path):
    gt = np.array([[0, 0, 1, 1], [0, 2, 2, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 2, 0, 1]], np.uint8)
    conf = confusion_matrix(gt, pred, 4)
    assert conf.sum() == 8 and conf[0, 1] == 1 and conf[2, 0] == 1
    import cv2 as _cv2
    _cv2.imwrite(str(tmp_path / 'gt.png'), gt)
    metric = PartIoUMetric(num_classes=4)
    metric.process(None, [dict(frame_id=1, seg_map_path=str(tmp_path /
                                                            'gt.png'),
                               pred_seg_map=pred)])
    # IoU: bg 2/4, class 1 3/4, class 2 1/2; class 3 absent.
    res = metric.compute_metrics(metric.results)
    assert res['mIoU'] == pytest.approx((2 / 4 + 3 / 4 + 1 / 2) / 3)


def test_fc_jhmdb_and_fc_vip_end_to_end(python, repo, tmp_path,
                                        subprocess_env):
    write_jhmdb(tmp_path / 'jhmdb')
    root = tmp_path / 'vip'
    write_davis(root, {'v1': moving_squares(4, 48, 64, 3, seed=5)})
    (root / 'lists').mkdir()
    (root / 'lists' / 'val_videos.txt').write_text('v1\n')
    (root / 'Images').symlink_to(root / 'JPEGImages' / '480p')
    (root / 'Annotations' / 'Category_ids').symlink_to(
        root / 'Annotations' / '480p')
    for config, data_root, key in [('fc_jhmdb', tmp_path / 'jhmdb',
                                    'jhmdb/PCK@0.1'),
                                   ('fc_vip', root, 'vip/mIoU')]:
        proc = subprocess.run([
            python, str(repo / 'tools' / 'test.py'),
            str(repo / 'configs' / f'{config}.py'), '--work-dir',
            str(tmp_path / config), '--cfg-options',
            f'test_dataloader.dataset.data_root={data_root}',
            'test_dataloader.num_workers=0'
        ], env=subprocess_env, capture_output=True, text=True, timeout=600)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-4000:]
        assert key in log, log[-2000:]
