from typing import Dict, List, Optional, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.structures import BaseDataElement

from sfc_plugin.registry import MODELS

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@MODELS.register_module()
class SFCTracker(BaseModel):
    """Video label propagation: first-frame labels in, every later frame out.

    The SFC evaluation protocol (paper §4.1, appendix A.2) as a model that
    mmengine's test loop drives frame by frame: an encoder (FC, semantic or
    fused features, unit-norm, stride 8) and a :class:`LabelPropagator`.
    Frame 0's labels are one-hot encoded (one channel per object id, the
    background included), bilinearly resized to the feature grid and
    propagated; each frame's soft labels are bilinearly upsampled to the
    image size and argmaxed.

    Streaming use::

        tracker.init(frame0, labels0)     # (3, H, W) normalised, (H, W) ids
        for frame in frames:
            ids = tracker.track(frame)    # (H, W) object ids

    Args:
        encoder (dict): Feature encoder config, e.g. CorrespondenceEncoder
            or FusedCorrespondenceEncoder.
        propagator (dict): LabelPropagator config.
        data_preprocessor (dict, optional): Defaults to mmengine's
            ImgDataPreprocessor with ImageNet statistics and BGR→RGB.
        init_cfg (dict, optional): mmengine initialisation config.
    """

    def __init__(self,
                 encoder: Dict,
                 propagator: Dict = dict(type='LabelPropagator'),
                 data_preprocessor: Optional[Dict] = None,
                 init_cfg: Optional[Dict] = None):
        if data_preprocessor is None:
            data_preprocessor = dict(
                type='ImgDataPreprocessor',
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                bgr_to_rgb=True)
        super().__init__(
            data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.encoder = MODELS.build(encoder)
        self.propagator = MODELS.build(propagator)
        self._image_size = None
        self._num_labels = 0

    @torch.no_grad()
    def extract_feat(self, frame: torch.Tensor) -> torch.Tensor:
        """(C, h, w) unit-norm features of one normalised (3, H, W) frame."""
        return self.encoder(frame[None])[0]

    @torch.no_grad()
    def init(self, frame: torch.Tensor, labels: torch.Tensor) -> None:
        """Starts a video.

        Args:
            frame (Tensor): (3, H, W) normalised frame 0.
            labels (Tensor): (H, W) integer object ids of frame 0, 0 for
                background; ids absent from the map stay empty channels.
        """
        if labels.shape != frame.shape[-2:]:
            raise ValueError(
                f'SFCTracker.init: labels {tuple(labels.shape)} and frame '
                f'{tuple(frame.shape[-2:])} differ in size')
        feat = self.extract_feat(frame)
        self._num_labels = int(labels.max()) + 1
        onehot = F.one_hot(labels.long(), self._num_labels).permute(
            2, 0, 1).to(feat.dtype)
        small = F.interpolate(
            onehot[None], size=feat.shape[-2:], mode='bilinear',
            align_corners=False)[0]
        self.propagator.init(feat, small)
        self._image_size = tuple(labels.shape)

    @torch.no_grad()
    def track_soft(self, frame: torch.Tensor) -> torch.Tensor:
        """(K, h, w) soft labels of the next frame, at feature resolution."""
        if self._image_size is None:
            raise RuntimeError('SFCTracker.track called before init')
        if tuple(frame.shape[-2:]) != self._image_size:
            raise ValueError(
                f'SFCTracker.track: frame size {tuple(frame.shape[-2:])} '
                f'differs from the first frame\'s {self._image_size}')
        return self.propagator.step(self.extract_feat(frame))

    def upsample(self, soft: torch.Tensor) -> torch.Tensor:
        """(K, h, w) soft labels → (H, W) object ids at image size."""
        full = F.interpolate(
            soft[None], size=self._image_size, mode='bilinear',
            align_corners=False)[0]
        return full.argmax(0)

    @torch.no_grad()
    def track(self, frame: torch.Tensor) -> torch.Tensor:
        """(H, W) object ids of the next (3, H, W) normalised frame."""
        return self.upsample(self.track_soft(frame))

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor,
                data_samples: List[BaseDataElement]
                ) -> List[BaseDataElement]:
        """Frames in video order; frame 0 of a video starts it.

        Each data sample needs ``frame_id`` and ``video``; frame 0's needs
        ``gt_seg_map``. Adds ``pred_seg_map`` (H, W) uint8 object ids.
        """
        for frame, sample in zip(inputs, data_samples):
            if sample.frame_id == 0:
                if 'gt_seg_map' not in sample:
                    raise KeyError(
                        f'SFCTracker: frame 0 of video "{sample.video}" comes '
                        'without its annotation (gt_seg_map)')
                labels = sample.gt_seg_map.to(frame.device)
                self.init(frame, labels)
                pred = labels
            else:
                pred = self.track(frame)
            sample.pred_seg_map = pred.to(torch.uint8).cpu()
        return data_samples

    def forward(self,
                inputs: torch.Tensor,
                data_samples: Optional[List[BaseDataElement]] = None,
                mode: str = 'predict') -> Union[torch.Tensor, list]:
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return self.encoder(inputs)
        raise RuntimeError(f'SFCTracker: invalid mode "{mode}"; it is not '
                           'trained, only "predict" and "tensor" exist')
