"""ONNX export of the correspondence encoders, checked in ONNX Runtime.

The graph maps normalised images (B, 3, H, W) (ImageNet statistics, RGB, as
:class:`SFCTracker`'s data preprocessor makes them) to unit-norm features
(B, C, ⌈H/8⌉, ⌈W/8⌉): the FC encoder, the semantic encoder, or the fused SFC
encoder in one graph. An export is complete only once ONNX Runtime has
reproduced PyTorch's features on real frames: the ``.onnx`` file and its
JSON report appear together, after the check, or not at all.
"""
import copy
import math
import os
import os.path as osp
import platform
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from mmengine.config import Config
from torch import nn

from sfc_plugin.datasets.utils import decode_frame, is_image_file
from sfc_plugin.models.encoders import CheckpointKeyError
from sfc_plugin.models.trackers.sfc_tracker import IMAGENET_MEAN, IMAGENET_STD
from sfc_plugin.registry import MODELS
from sfc_plugin.utils.config import apply_checkpoint, build_from_config
from sfc_plugin.utils.fileio import atomic_output, sha256
from sfc_plugin.utils.validation import check_integer

from .onnx_export import (
    MIN_OPSET,
    ExportError,
    check_opset,
    export_onnx,
    publish_report,
    settle_report,
    written_opset,
)
from .onnxruntime_ops import onnxruntime_session

#: Which encoder of a config to export: the config's own (FC, semantic or
#: fused SFC), or one branch of a fused config.
PARTS = ('full', 'fc', 'semantic')
#: Default tolerance on features (max abs difference) per precision.
DEFAULT_ATOL = {'fp32': 1e-4, 'fp16': 1e-2}
#: Largest side of the example frames: they only trace the graph and check
#: it (an 8192-pixel side already takes tens of GB through a ResNet).
MAX_EXAMPLE_SIDE = 4096


#: The fused encoder's config key of each part but 'full'.
_BRANCHES = dict(fc='fine_grained', semantic='semantic')


def encoder_config(cfg: Config, part: str = 'full') -> dict:
    """The encoder config to export from a tracker config."""
    if part not in PARTS:
        raise ExportError(f'part must be one of {PARTS}, got {part!r}')
    model = cfg.get('model')
    if model is None or 'encoder' not in model:
        raise ExportError(f'{cfg.filename}: no model.encoder; export needs a '
                          'tracker config (e.g. configs/sfc_davis.py)')
    enc = copy.deepcopy(model['encoder'])
    if part == 'full':
        return enc
    if enc.get('type') != 'FusedCorrespondenceEncoder':
        raise ExportError(
            f'part={part!r} needs a config with a fused SFC encoder; '
            f'{cfg.filename} has {enc.get("type")}: use part="full"')
    return enc[_BRANCHES[part]]


def build_encoder(cfg: Config,
                  part: str = 'full',
                  checkpoint: Optional[str] = None) -> nn.Module:
    """Builds the encoder in eval mode, loading ``checkpoint`` where the
    config's ``checkpoint_field`` says (as ``tools/test.py`` does).

    Raises:
        ExportError: The checkpoint is missing or does not fit the config.
    """
    cfg = copy.deepcopy(cfg)
    if checkpoint is not None and part in _BRANCHES:
        # Loaded into another branch, it would be recorded as the source of
        # an export that never read it.
        branch = f'model.encoder.{_BRANCHES[part]}'
        field = cfg.get('checkpoint_field')
        if not (isinstance(field, str) and field.startswith(branch + '.')):
            raise ExportError(
                f'{cfg.filename}: the checkpoint is loaded at '
                f'checkpoint_field "{field}", not in the {part} branch '
                f'({branch}) that part={part!r} exports; set that branch\'s '
                f'checkpoint with --cfg-options {branch}.checkpoint=PATH')
    if checkpoint is not None:
        try:
            apply_checkpoint(cfg, checkpoint, allow_load_from=False)
        except FileNotFoundError as e:
            raise ExportError(f'checkpoint not found: "{checkpoint}"') from e
        except ValueError as e:
            raise ExportError(f'{cfg.filename}: {e}; set the encoders\' '
                              'checkpoints with --cfg-options') from e
    try:
        encoder = build_from_config(
            MODELS, encoder_config(cfg, part),
            'model.encoder' + ('' if part == 'full' else
                               f'.{_BRANCHES[part]}'))
    except CheckpointKeyError as e:
        raise ExportError(f'a checkpoint does not match {cfg.filename}: '
                          f'{e}') from e
    except (OSError, RuntimeError, ValueError) as e:
        # Unreadable or unsafe files, shapes that do not fit, bad settings.
        raise ExportError(f'cannot build the encoder of {cfg.filename}: '
                          f'{e}') from e
    return encoder.eval()


def load_frames(paths: Sequence[str],
                limit: int = 2,
                size: Optional[Tuple[int, int]] = None) -> Tuple[
                    torch.Tensor, List[str]]:
    """Reads up to ``limit`` frames, normalised as the tracker does.

    Args:
        paths (Sequence[str]): Image files or folders of them (sorted).
        limit (int): Frames to read. Defaults to 2.
        size (tuple[int, int], optional): Resize to (H, W); by default all
            frames must share the first one's size.

    Returns:
        tuple: (B, 3, H, W) float32 images and their files.
    """
    limit = check_integer('export', 'num_frames', limit, low=1,
                          error=ExportError)
    if size is not None:
        size = tuple(size)
        if len(size) != 2 or not all(
                isinstance(s, int) and not isinstance(s, bool)
                and 1 <= s <= MAX_EXAMPLE_SIDE for s in size):
            raise ExportError(
                f'size must be two integers (H, W) in [1, {MAX_EXAMPLE_SIDE}]'
                f' (example frames: the exported model takes any size unless'
                f' static), got {size!r}')
    files = []
    for p in paths:
        if osp.isdir(p):
            files += sorted(
                osp.join(p, f) for f in os.listdir(p) if is_image_file(f))
        elif osp.isfile(p):
            files.append(p)
        else:
            raise ExportError(f'frames: no such file or folder: "{p}"')
    files = files[:limit]
    if not files:
        raise ExportError(f'frames: no images in {list(paths)}')
    mean = np.array(IMAGENET_MEAN, np.float32)
    std = np.array(IMAGENET_STD, np.float32)
    images = []
    for f in files:
        try:
            with open(f, 'rb') as file:
                bgr = decode_frame(file.read(), f)
        except OSError as err:
            raise ExportError(f'frames: {err}') from None
        if size is not None:
            bgr = cv2.resize(bgr, (size[1], size[0]),
                             interpolation=cv2.INTER_LINEAR)
        if images and bgr.shape != images[0].shape:
            raise ExportError(
                f'frames: "{f}" is {bgr.shape[1]}×{bgr.shape[0]}, the first '
                f'frame {images[0].shape[1]}×{images[0].shape[0]}; pass a '
                'size to resize them')
        images.append(bgr)
    rgb = np.stack([(im[..., ::-1] - mean) / std for im in images])
    return torch.from_numpy(rgb.transpose(0, 3, 1, 2).copy()), files


def _versions() -> Dict[str, str]:
    import onnx

    import sfc_plugin
    versions = dict(python=platform.python_version(), torch=torch.__version__,
                    onnx=onnx.__version__, sfc_plugin=sfc_plugin.__version__)
    try:
        import onnxruntime
        versions['onnxruntime'] = onnxruntime.__version__
    except ImportError:
        pass
    return versions


def check_onnx_against_torch(module: nn.Module, onnx_path: str,
                             images: torch.Tensor,
                             dtype: torch.dtype = torch.float32) -> Dict:
    """Runs the ONNX encoder (ONNX Runtime, CPU) and the module on
    ``images``; returns shapes and differences."""
    session = onnxruntime_session(onnx_path)
    input_name = session.get_inputs()[0].name
    with torch.no_grad():
        expected = module.float()(images.float())
    got = session.run(None, {input_name: images.to(dtype).numpy()})[0]
    diff = np.abs(got.astype(np.float64) - expected.double().numpy())
    return dict(input_shape=list(images.shape), output_shape=list(got.shape),
                expected_shape=list(expected.shape),
                max_abs_diff=float(diff.max()),
                mean_abs_diff=float(diff.mean()))


def export_encoder(cfg: Config,
                   out: str,
                   frames: Sequence[str],
                   part: str = 'full',
                   checkpoint: Optional[str] = None,
                   fp16: bool = False,
                   dynamic: bool = True,
                   opset: int = MIN_OPSET,
                   num_frames: int = 2,
                   size: Optional[Tuple[int, int]] = None,
                   atol: Optional[float] = None) -> Dict:
    """Exports an encoder to ``out`` and checks it in ONNX Runtime.

    The model is traced on the frames, exported to a temporary file, and run
    in ONNX Runtime against PyTorch (fp32) on the same frames; only within
    ``atol`` are ``out`` and then its report ``<out stem>.json`` written.

    Args:
        cfg (Config): Tracker config.
        out (str): Output ``.onnx`` path.
        frames (Sequence[str]): Frames (files or folders) for tracing and
            the check.
        part (str): ``'full'``, ``'fc'`` or ``'semantic'``.
        checkpoint (str, optional): Loaded at the config's
            ``checkpoint_field``.
        fp16 (bool): Export in float16. Defaults to False.
        dynamic (bool): Dynamic batch, height and width. Defaults to True.
        opset (int): ONNX opset (>= 17). Defaults to 17.
        num_frames (int): Frames used (the check's batch). Defaults to 2.
        size (tuple[int, int], optional): Resize frames to (H, W).
        atol (float, optional): Tolerance on features; 1e-4 for fp32 and
            1e-2 for fp16 by default.

    Returns:
        dict: The report.

    Raises:
        ExportError: Bad arguments, a checkpoint that does not fit, or
            ONNX Runtime disagreeing with PyTorch (nothing is written then,
            but ``<out stem>.failed.json``).
    """
    precision = 'fp16' if fp16 else 'fp32'
    atol = DEFAULT_ATOL[precision] if atol is None else atol
    if not (isinstance(atol, (int, float)) and math.isfinite(atol)
            and atol >= 0):
        raise ExportError(f'atol must be a finite number >= 0, got {atol!r}')
    opset = check_opset(opset)
    if not out.endswith('.onnx'):
        raise ExportError(f'out must end with .onnx, got "{out}"')
    images, files = load_frames(frames, num_frames, size)
    encoder = build_encoder(cfg, part, checkpoint)
    dtype = torch.float16 if fp16 else torch.float32
    module = copy.deepcopy(encoder).to(dtype)
    with atomic_output(out) as tmp:
        export_onnx(module, (images.to(dtype), ), tmp, ['images'],
                    ['features'],
                    dict(images={0: 'batch', 2: 'height', 3: 'width'},
                         features={0: 'batch', 2: 'feat_height',
                                   3: 'feat_width'}) if dynamic else None,
                    opset)
        check = check_onnx_against_torch(encoder, tmp, images, dtype)
        report = dict(
            config=cfg.filename, part=part,
            encoder=encoder_config(cfg, part).get('type'),
            precision=precision, opset=written_opset(tmp), dynamic=dynamic,
            frames=files,
            exporter='dynamo',
            atol=atol, passed=check['max_abs_diff'] <= atol, **check,
            versions=_versions(),
            checkpoint=None if checkpoint is None else dict(
                path=checkpoint, sha256=sha256(checkpoint)),
            onnx=dict(path=out, sha256=sha256(tmp)))
        settle_report(
            report, out,
            f'ONNX Runtime disagrees with PyTorch on {len(files)} frames: '
            f'max abs diff {check["max_abs_diff"]:.3g} > atol {atol:g} '
            f'(mean {check["mean_abs_diff"]:.3g})')
    publish_report(report, out)
    return report

