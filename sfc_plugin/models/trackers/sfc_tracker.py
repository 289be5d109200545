import contextlib
from typing import Dict, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.structures import BaseDataElement, InstanceData

from sfc_plugin.registry import MODELS, TASK_UTILS
from sfc_plugin.utils.memory import check_host_allocation

from ..encoders.checkpoint_loading import (
    select_backbone_weights,
    state_dict_of,
)
from ..encoders.cuda_graph import CUDAGraphEncoder
from ..encoders.inference_copy import ReducedPrecisionEncoder

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def channels_last_batch(frame: torch.Tensor,
                        dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A (C, H, W) frame as a channels-last batch of one, with the strides
    of a channels-last allocation, in ``dtype`` (default: the frame's).

    A frame decoded as (H, W, C) and permuted is already channels-last, and
    ``frame[None].contiguous(memory_format=torch.channels_last)`` returns it
    as it is; but its batch stride is then C, and the convolutions, which
    tell the layout from all four strides, take it for NCHW and run the
    whole network in that layout (the bf16 ResNet-18 at 480p: 0.077 s
    against 0.062 s). A frame laid out as (H, W, C) is viewed with the
    batch stride C·H·W (and converted, keeping those strides), anything
    else copied and converted in one pass.
    """
    c, h, w = frame.shape
    dtype = frame.dtype if dtype is None else dtype
    if frame.stride() == (1, w * c, c):
        return frame.as_strided((1, c, h, w),
                                (c * h * w, 1, w * c, c)).to(dtype)
    batch = torch.empty((1, c, h, w), dtype=dtype, device=frame.device,
                        memory_format=torch.channels_last)
    return batch.copy_(frame[None])


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
        tracker.anchor(frame, labels)     # a corrected frame, new objects

    Under mmengine's test loop it takes either sfc_plugin's data (one
    ``BaseDataElement`` per frame, :class:`PackVideoFrameInputs`) or mmdet
    3.x's tracking data (``TrackDataSample`` from ``PackTrackInputs`` and
    ``TrackDataPreprocessor``: frame 0's objects from its ``gt_instances``,
    each frame's result as ``pred_track_instances``), see :meth:`predict`.

    Weights: each encoder config names its own checkpoint. A whole-model
    checkpoint given to a Runner (``load_from``, mmdet's ``--checkpoint``)
    may be the tracker's own state dict, or a training checkpoint of the FC
    network (sfc_plugin's or the SFC reference's): that one goes into the
    FC network, found in it as :func:`load_backbone_checkpoint` finds it,
    and the other networks keep their weights.

    Args:
        encoder (dict): Feature encoder config, e.g. CorrespondenceEncoder
            or FusedCorrespondenceEncoder.
        propagator (dict): LabelPropagator config.
        label_codec (dict): Codec config. Defaults to ``MaskCodec``.
        data_preprocessor (dict, optional): Defaults to a
            :class:`VideoFramePreprocessor` (mmengine's ImgDataPreprocessor,
            faster on single frames) with ImageNet statistics, BGR→RGB, and
            non-blocking copies to the device (a pinned frame is then
            queued without waiting for the previous frame's work).
        backend (dict, optional): Where the features are computed: None or
            ``dict(type='torch')`` for ``encoder`` itself, else a deployed
            encoder, ``dict(type='onnxruntime', model='x.onnx')`` or
            ``dict(type='tensorrt', engine='x.engine')``
            (:mod:`sfc_plugin.deploy.backends`). Defaults to None.
        detector (dict, optional): Where frame 0's objects come from when
            not from annotations: a :class:`FirstFrameDetector` config
            (an mmdet instance-segmentation model). With it, frame 0's
            annotation is not used. Masks only. Defaults to None.
        precision (str): Of the torch path: 'fp32' (the paper protocol),
            or 'bf16' / 'fp16': the encoder run as a copy in that type with
            its BatchNorms folded (:class:`ReducedPrecisionEncoder`, remade
            when the weights change; under autocast in training mode), on
            channels-last input, features kept in that type (half the
            context memory), the matching on them with float32
            accumulation and a float32 softmax over the top-k; labels stay
            float32. fp16 needs a CUDA device. A deployed backend has its
            export's precision. Defaults to 'fp32'.
        cuda_graphs (bool): On CUDA, run the reduced-precision copy as a
            replayed CUDA graph (:class:`CUDAGraphEncoder`, captured again
            when the frame size or the weights change): one launch for the
            encoder instead of an operator call from Python per layer.
            Needs ``precision`` bf16 or fp16; the features are the same.
            Defaults to False.
        init_cfg (dict, optional): mmengine initialisation config.
    """

    #: Feature types of the ``precision`` settings.
    PRECISIONS = {'fp32': torch.float32, 'bf16': torch.bfloat16,
                  'fp16': torch.float16}

    #: Peak memory of an encoder's forward pass in units of its largest
    #: activation: the peak RSS of a 1080p frame on CPU gave 2.1 for FC
    #: (ResNet-18) and 4.3 to 5.6 for SFC (ResNet-50's bottlenecks, and the
    #: allocator's caching); 8 bounds both with room.
    PEAK_ACTIVATIONS = 8

    def __init__(self,
                 encoder: Dict,
                 propagator: Dict = dict(type='LabelPropagator'),
                 label_codec: Dict = dict(type='MaskCodec'),
                 data_preprocessor: Optional[Dict] = None,
                 backend: Optional[Dict] = None,
                 detector: Optional[Dict] = None,
                 precision: str = 'fp32',
                 cuda_graphs: bool = False,
                 init_cfg: Optional[Dict] = None):
        if data_preprocessor is None:
            data_preprocessor = dict(
                type='sfc_plugin.VideoFramePreprocessor',
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                bgr_to_rgb=True,
                non_blocking=True)
        super().__init__(
            data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.encoder = MODELS.build(encoder)
        self.propagator = MODELS.build(propagator)
        self.codec = TASK_UTILS.build(label_codec)
        self.backend = None
        if backend is not None and backend.get('type') != 'torch':
            import sfc_plugin.deploy.backends  # noqa: F401 (registers them)
            self.backend = MODELS.build(backend)
        if precision not in self.PRECISIONS:
            raise ValueError(f'SFCTracker: precision must be one of '
                             f'{sorted(self.PRECISIONS)}, got {precision!r}')
        if precision != 'fp32' and self.backend is not None:
            raise ValueError(
                f'SFCTracker: precision={precision!r} is for the torch '
                'encoder; a deployed backend runs at its export\'s precision '
                '(export an fp16 model instead)')
        self.precision = precision
        self._reduced_precision_encoder = ReducedPrecisionEncoder()
        if not isinstance(cuda_graphs, bool):
            raise TypeError('SFCTracker: cuda_graphs must be True or False, '
                            f'got {cuda_graphs!r}')
        if cuda_graphs and precision == 'fp32':
            raise ValueError(
                'SFCTracker: cuda_graphs=True runs the reduced-precision '
                "copy of the encoder; set precision='bf16' or 'fp16'")
        self._cuda_graphs = CUDAGraphEncoder() if cuda_graphs else None
        self.detector = None
        if detector is not None:
            if self.codec.target_key != 'gt_seg_map':
                raise ValueError('SFCTracker: a detector gives masks; it '
                                 'needs the MaskCodec')
            self.detector = MODELS.build(detector)
        self._image_size = None
        self._activations_per_pixel = None
        self._results_on_device = False
        # Objects of the video being tracked in mmdet's form: instance ids
        # and classes, in the order of their label channels 1..N.
        self._instances = None
        self.register_load_state_dict_pre_hook(
            _load_network_checkpoint_hook)

    def _apply(self, fn, *args, **kwargs):
        # .to(), .cuda(), .cpu() and the Runner's moves all end here: a
        # deployed backend follows the tracker to its device.
        module = super()._apply(fn, *args, **kwargs)
        self._reduced_precision_encoder.invalidate()
        if self._cuda_graphs is not None:
            self._cuda_graphs.reset()
        if self.backend is not None:
            param = next(self.parameters(), None)
            if param is not None:
                self.backend.to(param.device)
        return module

    @contextlib.contextmanager
    def results_on_device(self) -> Iterator['SFCTracker']:
        """Within it, :meth:`predict` leaves sfc_plugin's predictions on
        the model's device.

        Outside, each prediction is copied to host memory, as mmengine's
        evaluators expect, and the copy waits for the device to finish the
        frame. A caller that fetches the predictions itself, without waiting
        (:class:`sfc_plugin.utils.host_copy.HostCopy`), can queue the next
        frame meanwhile, as :func:`sfc_plugin.apis.inference_video` does.
        mmdet's tracking results (:meth:`predict_tracks`) are always copied.
        """
        previous = self._results_on_device
        self._results_on_device = True
        try:
            yield self
        finally:
            self._results_on_device = previous

    @property
    def feature_dtype(self) -> torch.dtype:
        """The type of the features matched: the ``precision``'s, float32
        from a deployed backend (which returns float32 whatever its
        export's precision)."""
        return (torch.float32 if self.backend is not None else
                self.PRECISIONS[self.precision])

    @torch.no_grad()
    def extract_feat(self, frame: torch.Tensor) -> torch.Tensor:
        """(C, h, w) unit-norm features of one normalised (3, H, W) frame,
        in the ``precision``'s type."""
        if self.backend is not None:
            return self.backend(frame[None])[0].to(frame.device)
        if self.precision == 'fp32':
            return self.encoder(frame[None])[0]
        dtype = self.PRECISIONS[self.precision]
        if dtype == torch.float16 and frame.device.type != 'cuda':
            raise ValueError(
                'SFCTracker: precision fp16 needs a CUDA device (the CPU '
                'matching kernel has no fp16 path); on the CPU use bf16')
        if self.encoder.training:
            # BatchNorms on batch statistics do not fold.
            with torch.autocast(frame.device.type, dtype=dtype):
                feat = self.encoder(channels_last_batch(frame))[0]
        else:
            encoder = self._reduced_precision_encoder(self.encoder, dtype)
            batch = channels_last_batch(frame, dtype)
            feat = (encoder(batch) if self._cuda_graphs is None else
                    self._cuda_graphs(encoder, batch))[0]
        return feat.to(dtype)

    @torch.no_grad()
    def init(self, frame: torch.Tensor, labels: torch.Tensor) -> None:
        """Starts a video.

        Args:
            frame (Tensor): (3, H, W) normalised frame 0.
            labels (Tensor): Frame 0's labels in the codec's form: (H, W)
                integer ids (0 for background) for masks and part maps,
                (J, 2) pixel coordinates (x, y) for keypoints.
        """
        self.check_encoder_memory(frame)
        feat = self.extract_feat(frame)
        expected = getattr(self.encoder, 'out_channels', None)
        if self.backend is not None and expected not in (None,
                                                         feat.shape[0]):
            # Its propagation settings are the config's, tuned for the
            # config's features (an FC model under sfc_davis.py once ran).
            raise ValueError(
                f'SFCTracker: the backend model gives {feat.shape[0]}-channel '
                f'features, but the config\'s encoder '
                f'({type(self.encoder).__name__}) has {expected}: the model '
                'was exported from another config or part; track with the '
                'config it was exported from')
        image_size = tuple(frame.shape[-2:])
        soft = self.codec.encode(labels, tuple(feat.shape[-2:]), image_size)
        # Labels stay float32 at any precision: K channels, cheap, and the
        # softmax-weighted sums the masks come from.
        self.propagator.init(feat, soft.float())
        self._image_size = image_size

    def check_encoder_memory(self, frame: torch.Tensor) -> None:
        """Refuses a frame whose encoding the host memory left cannot hold
        (a 16K frame takes about 36 GB through the FC encoder), when the
        torch encoder runs on the CPU. The need is taken as
        :attr:`PEAK_ACTIVATIONS` times the encoder's largest activation,
        scaled from a probe on a small input, plus the frame. A video's
        later frames have its first frame's size.

        Raises:
            HostMemoryError: Naming the frame size and the encoder.
        """
        if self.backend is not None or frame.device.type != 'cpu':
            return
        if self._activations_per_pixel is None:
            self._activations_per_pixel = _activations_per_pixel(
                self.encoder)
        height, width = frame.shape[-2:]
        nbytes = height * width * (
            self.PEAK_ACTIVATIONS * self._activations_per_pixel +
            3) * frame.element_size()
        check_host_allocation(
            'SFCTracker', nbytes,
            f'encoding {width}×{height} frames with '
            f'{type(self.encoder).__name__}',
            'downscale the video (a Resize in the pipeline)')

    @torch.no_grad()
    def track_soft(self, frame: torch.Tensor) -> torch.Tensor:
        """(K, h, w) soft labels of the next frame, at feature resolution."""
        self._check_next_frame('track', frame)
        return self.propagator.step(self.extract_feat(frame))

    @torch.no_grad()
    def anchor(self, frame: torch.Tensor, labels: torch.Tensor,
               complete: bool = False) -> torch.Tensor:
        """Takes the next frame's labels as given (a corrected frame).

        The labels replace the prediction for this frame, and the frame
        joins frame 0 as long-term memory (see
        :meth:`LabelPropagator.anchor`): ids not seen before are new
        objects, tracked from here on; an object absent from the labels
        keeps being tracked from the other frames, unless the anchor is
        ``complete``, when it ends (never predicted again).

        Args:
            frame (Tensor): (3, H, W) normalised frame.
            labels (Tensor): Its labels in the codec's form, as for
                :meth:`init`: (H, W) ids, or (J, 2) keypoints (the same J).
            complete (bool): The labels hold every object still in the
                video (object masks only). Defaults to False.

        Returns:
            Tensor: The frame's result in the codec's form: ``labels``.
        """
        self._check_next_frame('anchor', frame)
        keypoints = self.codec.target_key == 'gt_joints'
        if complete and (keypoints
                         or getattr(self.codec, 'num_classes', None)):
            raise ValueError('SFCTracker.anchor: `complete` ends objects; '
                             'it is for object masks, not keypoints or part '
                             'maps')
        feat = self.extract_feat(frame)
        soft = self.codec.encode(labels, tuple(feat.shape[-2:]),
                                 self._image_size).float()
        channels = self.propagator.num_channels
        if keypoints and soft.shape[0] != channels:
            raise ValueError(
                f'SFCTracker.anchor: {soft.shape[0] - 1} keypoints, the '
                f'video started with {channels - 1}')
        ended = []
        if complete:
            present = set(torch.unique(labels).tolist())
            ended = [c for c in range(1, channels) if c not in present]
        self.propagator.anchor(feat, soft, ended)
        return labels if keypoints else labels.to(torch.uint8)

    def _check_next_frame(self, method: str, frame: torch.Tensor) -> None:
        if self._image_size is None:
            raise RuntimeError(f'SFCTracker.{method} called before init')
        if tuple(frame.shape[-2:]) != self._image_size:
            raise ValueError(
                f'SFCTracker.{method}: frame size {tuple(frame.shape[-2:])} '
                f'differs from the first frame\'s {self._image_size}')

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

        sfc_plugin's form: ``inputs`` (N, 3, H, W), one data sample per
        frame with ``frame_id`` and ``video``; frame 0's needs the codec's
        target (``gt_seg_map`` or ``gt_joints``), and so does a later frame
        marked ``anchor`` (meta key; ``anchor_complete`` for a complete
        anchor), whose labels are taken as given (:meth:`anchor`). Adds
        the codec's prediction (``pred_seg_map`` (H, W) uint8 ids, or
        ``pred_joints`` (J, 2)), on the host, or on the model's device
        within :meth:`results_on_device`. Keypoints are given and returned
        in original image coordinates: a ``scale_factor`` (w, h) meta key
        (from a Resize transform) maps them to and from the network input.

        mmdet's form: ``inputs`` (N, T, 3, H, W) and ``TrackDataSample``
        objects (frames in ``video_data_samples``, see
        :meth:`predict_tracks`).
        """
        if data_samples and 'video_data_samples' in data_samples[0]:
            return self.predict_tracks(inputs, data_samples)
        target_key, pred_key = self.codec.target_key, self.codec.pred_key
        for frame, sample in zip(inputs, data_samples):
            scale = sample.metainfo.get('scale_factor')
            if sample.frame_id == 0 and self.detector is not None:
                ids, _, _ = self.detector(frame)
                self.init(frame, ids)
                pred = ids.to(torch.uint8)
            elif sample.frame_id == 0:
                target = self._target(sample, frame, scale)
                self.init(frame, target)
                pred = target if target_key == 'gt_joints' else target.to(
                    torch.uint8)
            elif sample.metainfo.get('anchor', False):
                pred = self.anchor(
                    frame, self._target(sample, frame, scale),
                    complete=sample.metainfo.get('anchor_complete', False))
            else:
                pred = self.track(frame)
            if pred_key == 'pred_joints' and scale is not None:
                pred = pred / pred.new_tensor(scale)
            sample.set_field(
                pred if self._results_on_device else pred.cpu(), pred_key)
        return data_samples

    def _target(self, sample: BaseDataElement, frame: torch.Tensor,
                scale) -> torch.Tensor:
        """A frame's given labels in network-input coordinates."""
        key = self.codec.target_key
        if key not in sample:
            raise KeyError(
                f'SFCTracker: frame {sample.frame_id} of video '
                f'"{sample.video}" comes without its annotation ({key})')
        target = sample.get(key).to(frame.device)
        if key == 'gt_joints' and scale is not None:
            target = target * target.new_tensor(scale)
        return target

    @torch.no_grad()
    def predict_tracks(self, inputs: torch.Tensor,
                       data_samples: list) -> list:
        """mmdet 3.x's tracking contract (``PackTrackInputs`` +
        ``TrackDataPreprocessor``).

        Frame 0's objects are its ``gt_instances``: ``masks`` (bitmap masks
        or an (N, H, W) tensor), ``instances_ids`` and, optionally,
        ``labels``; or the ``detector``'s. Object i (in increasing instance
        id) is propagated as label channel i, so DAVIS ids 1..N give the
        same masks as sfc_plugin's own pipeline. Masks at another size than
        the network input (annotations loaded after a Resize) are resized
        (nearest) to it.

        Each frame gets ``pred_track_instances`` (``InstanceData``):
        ``masks`` (N, H₀, W₀) bool at the original image size
        (``ori_shape``), ``instances_id`` (N,), ``labels`` (N,) and
        ``scores`` (N,): the mean propagated probability of the object over
        the feature cells it wins (1 on frame 0, 0 where it wins none).

        Args:
            inputs (Tensor): (N, T, 3, H, W) normalised frames (padding,
                if any, is cropped to each frame's ``img_shape``).
            data_samples (list[TrackDataSample]): N videos' frames, in order.

        Returns:
            list[TrackDataSample]: ``data_samples``, with the predictions.
        """
        if self.codec.target_key != 'gt_seg_map':
            raise ValueError('SFCTracker: mmdet\'s tracking data carries '
                             'instance masks; it needs the MaskCodec')
        if inputs.dim() != 5:
            raise ValueError('SFCTracker: mmdet\'s tracking data comes as '
                             '(N, T, 3, H, W) frames (TrackDataPreprocessor), '
                             f'got {tuple(inputs.shape)}')
        for frames, track_sample in zip(inputs, data_samples):
            for frame, sample in zip(frames,
                                     track_sample.video_data_samples):
                h, w = sample.metainfo.get('img_shape', frame.shape[-2:])
                frame = frame[:, :h, :w]
                sample.pred_track_instances = self._track_instances(
                    frame, sample)
        return data_samples

    def _track_instances(self, frame: torch.Tensor,
                         sample) -> InstanceData:
        ori_shape = tuple(sample.metainfo.get('ori_shape',
                                              frame.shape[-2:]))[:2]
        if sample.frame_id == 0:
            channels, ids, labels = self._first_frame_objects(frame, sample)
            self.init(frame, channels)
            self._instances = (ids, labels)
            channels = _resized_ids(channels, ori_shape)
            scores = torch.ones(len(ids))
        else:
            if self._instances is None:
                raise RuntimeError(
                    'SFCTracker: a video must start at frame_id 0 (use '
                    'TrackImgSampler, or whole videos, in order)')
            ids, labels = self._instances
            soft = self.track_soft(frame)
            channels = self.codec.decode(soft, ori_shape).long()
            scores = _channel_scores(soft, len(ids))
        objects = torch.arange(1, len(ids) + 1, device=channels.device)
        return InstanceData(
            masks=(channels[None] == objects[:, None, None]).cpu(),
            instances_id=ids.clone(),
            labels=labels.clone(),
            scores=scores.float().cpu())

    def _first_frame_objects(
            self, frame: torch.Tensor, sample
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(H, W) map of label channels 1..N, instance ids and classes."""
        size = tuple(frame.shape[-2:])
        if self.detector is not None:
            channels, labels, _ = self.detector(frame)
            ids = torch.arange(1, int(labels.numel()) + 1)
            return channels, ids, labels.cpu()
        gt = sample.get('gt_instances')
        if gt is None or 'masks' not in gt or 'instances_ids' not in gt:
            raise KeyError(
                'SFCTracker: frame 0 of video '
                f'{sample.metainfo.get("video_id", "?")} comes without its '
                'objects (gt_instances with masks and instances_ids: '
                'LoadTrackAnnotations(with_mask=True))')
        masks = gt.masks
        masks = torch.as_tensor(
            masks.to_ndarray() if hasattr(masks, 'to_ndarray') else masks)
        ids = torch.as_tensor(gt.instances_ids).long().cpu()
        if len(ids) != len(masks):
            raise ValueError(f'SFCTracker: frame 0 has {len(masks)} masks '
                             f'but {len(ids)} instance ids')
        if len(set(ids.tolist())) != len(ids):
            raise ValueError('SFCTracker: frame 0 repeats instance ids '
                             f'{ids.tolist()}')
        labels = torch.as_tensor(gt.labels).long().cpu() if (
            'labels' in gt) else torch.zeros(len(ids), dtype=torch.long)
        order = ids.argsort()
        ids, labels, masks = ids[order], labels[order], masks[order]
        channels = torch.zeros(masks.shape[-2:], dtype=torch.long)
        for channel, mask in enumerate(masks.bool(), start=1):
            channels[mask] = channel
        return _resized_ids(channels, size).to(frame.device), ids, labels

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


@torch.no_grad()
def _activations_per_pixel(encoder: torch.nn.Module, side: int = 128) -> float:
    """Elements of the encoder's largest activation per input pixel, from
    one forward pass of a ``side`` × ``side`` input (activations of a
    convolutional encoder scale with the input area)."""
    largest = [0]

    def record(module, args, output):
        outputs = output if isinstance(output, (tuple, list)) else [output]
        for t in outputs:
            if isinstance(t, torch.Tensor):
                largest[0] = max(largest[0], t.numel())

    leaves = [m for m in encoder.modules() if not list(m.children())]
    handles = [m.register_forward_hook(record) for m in leaves]
    param = next(encoder.parameters(), torch.zeros(()))
    training = encoder.training
    encoder.eval()  # BatchNorm statistics must not see the probe
    try:
        encoder(param.new_zeros(1, 3, side, side))
    finally:
        encoder.train(training)
        for handle in handles:
            handle.remove()
    return largest[0] / (side * side)


def _resized_ids(ids: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """An (H, W) id map at ``size`` (nearest neighbour; as it is if it has
    that size already)."""
    if tuple(ids.shape) == tuple(size):
        return ids
    return F.interpolate(ids[None, None].float(), size=size,
                         mode='nearest')[0, 0].long()


def _channel_scores(soft: torch.Tensor, num_objects: int) -> torch.Tensor:
    """Per object (channels 1..N of ``soft`` (1 + N, h, w)), the mean of its
    probability over the cells where it is the largest; 0 where none."""
    winner = soft.max(0).indices
    scores = torch.zeros(num_objects, dtype=torch.float32)
    for obj in range(1, num_objects + 1):
        won = winner == obj
        if won.any():
            scores[obj - 1] = soft[obj][won].float().mean()
    return scores


def _fc_network(tracker: SFCTracker) -> Tuple[str, torch.nn.Module]:
    """The FC network's backbone and its name in the tracker's state dict:
    a fused encoder's ``fine_grained`` part, else the encoder's."""
    name, encoder = 'encoder.', tracker.encoder
    if hasattr(encoder, 'fine_grained'):
        name, encoder = name + 'fine_grained.', encoder.fine_grained
    if not hasattr(encoder, 'backbone'):
        raise TypeError(f'SFCTracker: {type(encoder).__name__} has no '
                        'backbone to load a network checkpoint into')
    return name + 'backbone.', encoder.backbone


def _load_network_checkpoint_hook(module, state_dict, prefix, *args) -> None:
    """Turns a network checkpoint given for the whole tracker into the
    tracker's state dict (see :class:`SFCTracker`).

    A state dict holding any of the tracker's own keys is left alone;
    otherwise it is read as a checkpoint of the FC network and replaced, in
    place, by the tracker's state with those weights in the FC backbone.
    """
    own = module.state_dict(prefix=prefix)
    if any(key in own for key in state_dict):
        return
    name, backbone = _fc_network(module)
    source = 'given to the tracker (load_from)'
    weights = state_dict_of(
        {k[len(prefix):]: v for k, v in state_dict.items()
         if k.startswith(prefix)}, source)
    weights, _ = select_backbone_weights(backbone, weights, source)
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]
    state_dict.update(own)
    state_dict.update({prefix + name + k: v for k, v in weights.items()})
