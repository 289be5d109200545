"""Frame 0's objects from an instance-segmentation model ("detect, then
propagate")."""
import os
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.logging import MMLogger

from sfc_plugin.registry import MODELS
from sfc_plugin.utils.optional import require_mmdet
from sfc_plugin.utils.validation import check_integer, check_real

from ..encoders.checkpoint_loading import read_checkpoint, state_dict_of


@MODELS.register_module()
class FirstFrameDetector(nn.Module):
    """Objects of a video's first frame, found by an mmdet detector.

    Semi-supervised propagation needs frame 0's objects; where nobody
    annotated them, an instance-segmentation model (Mask R-CNN, SOLOv2,
    Mask2Former, ... from mmdet 3.x) finds them, and :class:`SFCTracker`
    propagates its masks. Detections scoring at least ``score_thr`` become
    objects 1..N in decreasing score; where masks overlap, the higher score
    keeps the pixel.

    The detector sees the tracker's normalised frame (its
    ``data_preprocessor`` is not run), as in mmdet's own trackers: use
    the statistics it was trained with in the tracker's preprocessor
    (mmdet's COCO models use the ImageNet ones, like the tracker's
    default).

    Args:
        config (str, optional): An mmdet config file whose ``model`` is the
            detector, e.g. ``'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'``.
        model (dict, optional): The detector's model config instead of a
            file; its types resolve in ``_scope_`` (default 'mmdet').
        checkpoint (str, optional): Detector weights, read with
            ``torch.load(weights_only=True)``; every weight of the model
            must be there. Defaults to None (as built: only for tests).
        score_thr (float): Lowest score kept. Defaults to 0.5.
        max_objects (int): At most this many objects, best first (ids are
            8-bit in DAVIS results). Defaults to 255.
    """

    def __init__(self,
                 config: Optional[str] = None,
                 model: Optional[Dict] = None,
                 checkpoint: Optional[str] = None,
                 score_thr: float = 0.5,
                 max_objects: int = 255):
        super().__init__()
        if (config is None) == (model is None):
            raise ValueError('FirstFrameDetector: give exactly one of '
                             '`config` (an mmdet config file) and `model` '
                             '(a model config dict)')
        owner = 'FirstFrameDetector'
        score_thr = check_real(owner, 'score_thr', score_thr)
        if not 0 <= score_thr <= 1:  # NaN included
            raise ValueError(f'{owner}: score_thr must be in [0, 1], got '
                             f'{score_thr!r}')
        max_objects = check_integer(owner, 'max_objects', max_objects, 1,
                                    255, ' (a palette PNG holds 255 ids)')
        require_mmdet('FirstFrameDetector')
        from mmengine.config import Config
        from mmengine.hub import get_config
        from mmengine.registry import MODELS as ROOT_MODELS
        if config is not None:
            try:
                # 'mmdet::x.py' names a config shipped inside mmdet.
                model = (get_config(config) if '::' in config else
                         Config.fromfile(config)).model
            except (OSError, ValueError, SyntaxError) as err:
                raise ValueError(f'FirstFrameDetector: cannot read config '
                                 f'"{config}": {err}') from None
        model = dict(model)
        model.setdefault('_scope_', 'mmdet')
        self.detector = ROOT_MODELS.build(model)
        if checkpoint is None:
            MMLogger.get_current_instance().warning(
                'FirstFrameDetector: no checkpoint given, the detector keeps '
                'its random initialisation (set model.detector.checkpoint)')
        else:
            checkpoint = os.fspath(checkpoint)
            state = state_dict_of(read_checkpoint(checkpoint), checkpoint)
            missing, _ = self.detector.load_state_dict(state, strict=False)
            if missing:
                raise ValueError(
                    f'FirstFrameDetector: checkpoint "{checkpoint}" misses '
                    f'{len(missing)} weights of the detector, e.g. '
                    f'{missing[:5]}: another architecture?')
        self.score_thr = score_thr
        self.max_objects = max_objects

    @torch.no_grad()
    def forward(self, frame: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Detects the objects of one frame.

        Args:
            frame (Tensor): (3, H, W) normalised frame.

        Returns:
            tuple: ``ids`` (H, W) int64 map of objects 1..N (0 background),
            ``labels`` (N,) their classes and ``scores`` (N,), best first.
        """
        from mmdet.structures import DetDataSample
        size = tuple(frame.shape[-2:])
        sample = DetDataSample(metainfo=dict(
            img_shape=size, ori_shape=size, pad_shape=size,
            batch_input_shape=size, scale_factor=(1.0, 1.0)))
        was_training = self.detector.training
        self.detector.eval()
        try:
            pred = self.detector.predict(
                frame[None], [sample], rescale=False)[0].pred_instances
        finally:
            self.detector.train(was_training)
        if 'masks' not in pred:
            raise ValueError(
                f'FirstFrameDetector: {type(self.detector).__name__} gives '
                'no masks: propagation needs an instance-segmentation model')
        keep = pred.scores >= self.score_thr
        scores, order = pred.scores[keep].sort(descending=True)
        order = order[:self.max_objects]
        masks = torch.as_tensor(pred.masks[keep][order], device=frame.device)
        if tuple(masks.shape[-2:]) != size:
            raise ValueError(
                f'FirstFrameDetector: masks {tuple(masks.shape[-2:])} do not '
                f'have the frame\'s size {size}')
        ids = torch.zeros(size, dtype=torch.long, device=frame.device)
        # Lowest score first, so the best detection keeps shared pixels.
        for rank in range(len(order) - 1, -1, -1):
            ids[masks[rank].bool()] = rank + 1
        return ids, pred.labels[keep][order], scores[:len(order)]
