from typing import Dict, List, Optional, Union

import torch
from mmengine.model import BaseModel
from mmengine.structures import BaseDataElement

from sfc_plugin.registry import MODELS, TASK_UTILS

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@MODELS.register_module()
class SFCTracker(BaseModel):
    """Video label propagation: first-frame labels in, every later frame out.

    The SFC evaluation protocol (paper §4.1, appendix A.2) as a model that
    mmengine's test loop drives frame by frame: an encoder (FC, semantic or
    fused features, unit-norm, stride 8), a :class:`LabelPropagator`, and a
    label codec that turns the task's labels into soft label maps on the
    feature grid and back: :class:`MaskCodec` for object masks and part maps
    (one-hot, bilinear resizing, argmax) or :class:`KeypointCodec` for
    keypoints (Gaussian maps, top-3 decoding).

    Streaming use::

        tracker.init(frame0, labels0)     # (3, H, W) normalised, labels
        for frame in frames:
            pred = tracker.track(frame)   # (H, W) ids, or (J, 2) keypoints

    Args:
        encoder (dict): Feature encoder config, e.g. CorrespondenceEncoder
            or FusedCorrespondenceEncoder.
        propagator (dict): LabelPropagator config.
        label_codec (dict): Codec config. Defaults to ``MaskCodec``.
        data_preprocessor (dict, optional): Defaults to mmengine's
            ImgDataPreprocessor with ImageNet statistics and BGR→RGB.
        backend (dict, optional): Where the features are computed: None or
            ``dict(type='torch')`` for ``encoder`` itself, else a deployed
            encoder, ``dict(type='onnxruntime', model='x.onnx')`` or
            ``dict(type='tensorrt', engine='x.engine')``
            (:mod:`sfc_plugin.deploy.backends`). Defaults to None.
        init_cfg (dict, optional): mmengine initialisation config.
    """

    def __init__(self,
                 encoder: Dict,
                 propagator: Dict = dict(type='LabelPropagator'),
                 label_codec: Dict = dict(type='MaskCodec'),
                 data_preprocessor: Optional[Dict] = None,
                 backend: Optional[Dict] = None,
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
        self.codec = TASK_UTILS.build(label_codec)
        self.backend = None
        if backend is not None and backend.get('type') != 'torch':
            import sfc_plugin.deploy.backends  # noqa: F401 (registers them)
            self.backend = MODELS.build(backend)
        self._image_size = None

    def _apply(self, fn, *args, **kwargs):
        # .to(), .cuda(), .cpu() and the Runner's moves all end here: a
        # deployed backend follows the tracker to its device.
        module = super()._apply(fn, *args, **kwargs)
        if self.backend is not None:
            param = next(self.parameters(), None)
            if param is not None:
                self.backend.to(param.device)
        return module

    @torch.no_grad()
    def extract_feat(self, frame: torch.Tensor) -> torch.Tensor:
        """(C, h, w) unit-norm features of one normalised (3, H, W) frame."""
        if self.backend is not None:
            return self.backend(frame[None])[0].to(frame.device)
        return self.encoder(frame[None])[0]

    @torch.no_grad()
    def init(self, frame: torch.Tensor, labels: torch.Tensor) -> None:
        """Starts a video.

        Args:
            frame (Tensor): (3, H, W) normalised frame 0.
            labels (Tensor): Frame 0's labels in the codec's form: (H, W)
                integer ids (0 for background) for masks and part maps,
                (J, 2) pixel coordinates (x, y) for keypoints.
        """
        feat = self.extract_feat(frame)
        image_size = tuple(frame.shape[-2:])
        soft = self.codec.encode(labels, tuple(feat.shape[-2:]), image_size)
        self.propagator.init(feat, soft.to(feat.dtype))
        self._image_size = image_size

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

    @torch.no_grad()
    def track(self, frame: torch.Tensor) -> torch.Tensor:
        """The next (3, H, W) normalised frame's labels, in the codec's form.
        """
        return self.codec.decode(self.track_soft(frame), self._image_size)

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor,
                data_samples: List[BaseDataElement]
                ) -> List[BaseDataElement]:
        """Frames in video order; frame 0 of a video starts it.

        Each data sample needs ``frame_id`` and ``video``; frame 0's needs the
        codec's target (``gt_seg_map`` or ``gt_joints``). Adds the codec's
        prediction (``pred_seg_map`` (H, W) uint8 ids, or ``pred_joints``
        (J, 2)). Keypoints are given and returned in original image
        coordinates: a ``scale_factor`` (w, h) meta key (from a Resize
        transform) maps them to and from the network input.
        """
        target_key, pred_key = self.codec.target_key, self.codec.pred_key
        for frame, sample in zip(inputs, data_samples):
            scale = sample.metainfo.get('scale_factor')
            if sample.frame_id == 0:
                if target_key not in sample:
                    raise KeyError(
                        f'SFCTracker: frame 0 of video "{sample.video}" comes '
                        f'without its annotation ({target_key})')
                target = sample.get(target_key).to(frame.device)
                if target_key == 'gt_joints' and scale is not None:
                    target = target * target.new_tensor(scale)
                self.init(frame, target)
                pred = target if target_key == 'gt_joints' else target.to(
                    torch.uint8)
            else:
                pred = self.track(frame)
            if pred_key == 'pred_joints' and scale is not None:
                pred = pred / pred.new_tensor(scale)
            sample.set_field(pred.cpu(), pred_key)
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
