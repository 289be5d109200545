from typing import Optional, Sequence

import torch

from sfc_plugin.ops import (
    check_integer,
    check_match_settings,
    topk_window_match,
)
from sfc_plugin.registry import MODELS
from sfc_plugin.utils.memory import check_host_allocation


@MODELS.register_module()
class LabelPropagator:
    """Streaming label propagation with the CRW protocol (paper §4.1, A.2).

    For target frame t the keys are frame 0 with its ground-truth labels
    (long-term memory) and the ``context_frames`` (m) preceding frames with
    their predicted soft labels (short-term memory); while t <= m the missing
    short-term slots hold frame 0. Matching is :func:`topk_window_match`:
    joint top-k over all keys, short-term frames restricted to a window of
    ``radius``, frame 0 unrestricted unless ``restrict_first_frame``.

    Only the 1 + m context frames are held, in preallocated buffers, so
    memory does not grow with the video length. On the host, buffers that
    the memory left cannot hold (a huge ``context_frames`` or frame) are
    refused with a ``MemoryError`` naming the setting before they are
    allocated. The short-term slots form a ring: the order of key frames
    does not change a joint top-k.

    Anchors (:meth:`anchor`) are later frames whose labels someone gave (a
    corrected frame, objects entering the scene): such a frame's labels
    replace the prediction, and it joins frame 0 as long-term memory, an
    unrestricted key frame kept for the rest of the video. At most
    ``max_anchors`` are kept besides frame 0, the oldest dropped first
    (frame 0 never is), so memory stays bounded: 1 + max_anchors + m
    frames. Without anchors the keys, and so the results, are the paper
    protocol's.

    Args:
        topk (int): Neighbours per position, >= 1. Defaults to 10.
        radius (float): Window radius r' in feature pixels, >= 0; ``inf``
            means no window. Defaults to 12.
        context_frames (int): m, the short-term memory, in [0, 10000].
            Defaults to 20.
        temperature (float): Softmax temperature τ, finite and > 0.
            Defaults to 0.05.
        restrict_first_frame (bool): Apply the window to frame 0 (and the
            anchors) too. Defaults to False (the reference's protocol).
        max_anchors (int): Anchor frames kept besides frame 0, in
            [0, 1000]. Defaults to 4.

    Raises:
        ValueError: A setting of the wrong type or out of range, named.

    Example:
        >>> prop = LabelPropagator(topk=10, radius=12, context_frames=20)
        >>> prop.init(feat0, labels0)       # (C, h, w), (K, h, w)
        >>> for feat in later_feats:
        ...     labels = prop.step(feat)    # (K, h, w) soft labels
        >>> prop.anchor(feat, corrected)    # (K', h, w), K' >= K: new objects
    """

    #: Upper bound on ``context_frames``: 1 + m frame buffers are
    #: preallocated, and the protocols use m <= 20.
    MAX_CONTEXT_FRAMES = 10_000
    #: Upper bound on ``max_anchors`` (each is a full-frame key).
    MAX_ANCHORS = 1000

    def __init__(self,
                 topk: int = 10,
                 radius: float = 12,
                 context_frames: int = 20,
                 temperature: float = 0.05,
                 restrict_first_frame: bool = False,
                 max_anchors: int = 4):
        owner = 'LabelPropagator'
        # The op's own rules, so that a bad config fails here, when the
        # model is built, not at the first frame of a video.
        self.topk, self.radius, self.temperature = check_match_settings(
            owner, topk, radius, temperature)
        context_frames = check_integer(
            owner, 'context_frames', context_frames, 0,
            self.MAX_CONTEXT_FRAMES, ' (1 + context_frames frames of '
            'features and labels are preallocated)')
        if not isinstance(restrict_first_frame, bool):
            raise ValueError(f'{owner}: restrict_first_frame must be a bool, '
                             f'got {restrict_first_frame!r}')
        max_anchors = check_integer(owner, 'max_anchors', max_anchors, 0,
                                    self.MAX_ANCHORS)
        self.context_frames = context_frames
        self.restrict_first_frame = restrict_first_frame
        self.max_anchors = max_anchors
        # Key frames: frame 0, then the anchors (oldest first), then the
        # short-term ring; the first 1 + anchors are long-term memory.
        self._feats: Optional[torch.Tensor] = None
        self._labels: Optional[torch.Tensor] = None
        self._anchors = 0
        self._t = 0

    @property
    def frame_index(self) -> int:
        """Index of the last frame seen (0 after :meth:`init`)."""
        return self._t

    @property
    def num_anchors(self) -> int:
        """Anchor frames held besides frame 0."""
        return self._anchors

    @property
    def num_channels(self) -> int:
        """Label channels propagated (background included)."""
        if self._labels is None:
            raise RuntimeError('LabelPropagator: no video started')
        return self._labels.shape[1]

    def init(self, feat: torch.Tensor, labels: torch.Tensor) -> None:
        """Starts a video from frame 0's features and labels.

        Args:
            feat (Tensor): (C, h, w) unit-norm features of frame 0.
            labels (Tensor): (K, h, w) labels of frame 0 at feature
                resolution (one channel per class, background included).
        """
        _check_labelled_frame('init', 'frame 0', feat, labels)
        self._feats, self._labels = self._new_buffers(
            'init', 1 + self.context_frames, feat, labels.shape[0],
            labels.dtype)
        self._feats.copy_(feat.expand_as(self._feats))
        self._labels.copy_(labels.expand_as(self._labels))
        self._anchors = 0
        self._t = 0

    def step(self, feat: torch.Tensor) -> torch.Tensor:
        """Propagates to the next frame and remembers it.

        Args:
            feat (Tensor): (C, h, w) unit-norm features of frame t.

        Returns:
            Tensor: (K, h, w) soft labels of frame t.
        """
        self._check_next_frame('step', feat)
        labels = topk_window_match(
            feat,
            self._feats,
            self._labels,
            topk=self.topk,
            radius=self.radius,
            temperature=self.temperature,
            unrestricted_keys=0 if self.restrict_first_frame else
            1 + self._anchors)
        self._remember(feat, labels)
        return labels

    def anchor(self, feat: torch.Tensor, labels: torch.Tensor,
               ended: Sequence[int] = ()) -> torch.Tensor:
        """Takes the next frame's labels as given, and keeps it.

        The frame's labels are ``labels`` (no matching is run); the frame
        becomes an anchor (long-term, unrestricted key frame) and, like any
        frame, short-term memory; short-term slots not reached yet (the
        first m frames of a video), which hold frame 0 as a stand-in, hold
        the anchor instead. More channels than propagated so far are
        new objects: their channel is 0 in all earlier memory. Fewer are
        padded with 0 (those objects are absent from this frame, and keep
        being tracked from the other frames). Channels in ``ended`` are set
        to 0 in all memory: those objects are never predicted again.

        Args:
            feat (Tensor): (C, h, w) unit-norm features of the frame.
            labels (Tensor): (K', h, w) labels of the frame at feature
                resolution.
            ended (Sequence[int]): Channels (objects) that end here.
                Defaults to ().

        Returns:
            Tensor: (max(K, K'), h, w) the frame's labels as propagated.
        """
        self._check_next_frame('anchor', feat)
        _check_labelled_frame('anchor', 'the anchor frame', feat, labels)
        channels = max(self.num_channels, labels.shape[0])
        bad = [c for c in ended if not 0 < int(c) < channels]
        if bad:
            raise ValueError(f'LabelPropagator.anchor: ended channels {bad} '
                             f'are not objects of 1..{channels - 1}')
        if channels > self.num_channels:
            _, grown = self._new_buffers('anchor', self._labels.shape[0],
                                         None, channels, self._labels.dtype)
            grown.zero_()
            grown[:, :self.num_channels] = self._labels
            self._labels = grown
        padded = self._labels.new_zeros((channels, *labels.shape[1:]))
        padded[:labels.shape[0]] = labels
        labels = padded
        for c in ended:
            self._labels[:, int(c)] = 0
            labels[int(c)] = 0
        self._keep_anchor(feat, labels)
        self._remember(feat, labels)
        # Early in a video the short-term slots not yet reached hold frame
        # 0 as a stand-in; the latest labelled frame takes that role now,
        # or m stale copies would outvote the anchor.
        ring = 1 + self._anchors
        filled = min(self._t, self.context_frames)
        self._feats[ring + filled:] = feat
        self._labels[ring + filled:] = labels
        return labels

    def _check_next_frame(self, method: str, feat: torch.Tensor) -> None:
        if self._feats is None:
            raise RuntimeError(f'LabelPropagator.{method} called before init')
        if feat.shape != self._feats.shape[1:]:
            raise ValueError(
                f'LabelPropagator.{method}: frame features '
                f'{tuple(feat.shape)} differ from frame 0\'s '
                f'{tuple(self._feats.shape[1:])}')

    def _keep_anchor(self, feat: torch.Tensor, labels: torch.Tensor) -> None:
        """Puts an anchor after the others, dropping the oldest when
        ``max_anchors`` are held."""
        if self.max_anchors == 0:
            return
        if self._anchors == self.max_anchors:
            last = self._anchors
            self._feats[1:last] = self._feats[2:last + 1].clone()
            self._labels[1:last] = self._labels[2:last + 1].clone()
            self._feats[last].copy_(feat)
            self._labels[last].copy_(labels)
            return
        # One more slot before the short-term ring (anchors are rare: the
        # buffers are rebuilt, not preallocated for max_anchors).
        slot = 1 + self._anchors
        feats, labels_buf = self._new_buffers(
            'anchor', self._feats.shape[0] + 1, feat, self.num_channels,
            self._labels.dtype)
        for new, old in ((feats, self._feats), (labels_buf, self._labels)):
            new[:slot] = old[:slot]
            new[slot + 1:] = old[slot:]
        feats[slot].copy_(feat)
        labels_buf[slot].copy_(labels)
        self._feats, self._labels = feats, labels_buf
        self._anchors += 1

    def _new_buffers(self, method: str, slots: int,
                     feat: Optional[torch.Tensor], channels: int,
                     label_dtype: torch.dtype):
        """Uninitialised key-frame buffers, checked against the host memory
        left first: ``slots`` frames of features like ``feat`` (none if
        ``feat`` is None: the labels of the frames held) and of
        ``channels`` label channels.

        Returns:
            tuple: features (slots, C, h, w), channels-last, or None;
            labels (slots, channels, h, w).
        """
        like = self._labels[0, 0] if feat is None else feat[0]
        # Twice the labels: each matching step gathers from a position-major
        # copy of all key frames' labels (ops.topk_window_match), which for
        # many keypoints is as large as the buffer itself.
        frame_bytes = 2 * channels * like.numel() * label_dtype.itemsize
        if feat is not None:
            frame_bytes += feat.numel() * feat.element_size()
        if like.device.type == 'cpu':
            anchors = slots - 1 - self.context_frames
            check_host_allocation(
                f'LabelPropagator.{method}', slots * frame_bytes,
                f'{slots} key frames (1 + context_frames='
                f'{self.context_frames} + {anchors} anchors) of '
                f'{tuple(like.shape)} features and {channels} label channels '
                '(and the matching\'s copy of the labels)',
                'lower context_frames (or max_anchors), track fewer objects '
                'or keypoints, or downscale the video')
        feats = None
        if feat is not None:
            # Channels-last: topk_window_match reads windows of positions
            # as C-contiguous rows, so this layout spares it a copy of all
            # keys.
            feats = torch.empty((slots, *feat.shape), dtype=feat.dtype,
                                device=feat.device,
                                memory_format=torch.channels_last)
        labels = torch.empty((slots, channels, *like.shape),
                             dtype=label_dtype, device=like.device)
        return feats, labels

    def _remember(self, feat: torch.Tensor, labels: torch.Tensor) -> None:
        """The frame just labelled becomes short-term memory."""
        self._t += 1
        if self.context_frames:
            slot = 1 + self._anchors + (self._t - 1) % self.context_frames
            self._feats[slot].copy_(feat)
            self._labels[slot].copy_(labels)

    def reset(self) -> None:
        """Releases the context buffers."""
        self._feats = self._labels = None
        self._anchors = 0
        self._t = 0


def _check_labelled_frame(method: str, what: str, feat: torch.Tensor,
                          labels: torch.Tensor) -> None:
    """Shapes and finiteness of a frame given with its labels, checked once
    (one frame, cheap): bad features would otherwise surface a frame later
    as the op's 'keys contain NaN'."""
    owner = f'LabelPropagator.{method}'
    if feat.dim() != 3 or labels.dim() != 3:
        raise ValueError(f'{owner}: need feat (C, h, w) and labels (K, h, w), '
                         f'got {tuple(feat.shape)} and '
                         f'{tuple(labels.shape)}')
    if feat.shape[1:] != labels.shape[1:]:
        raise ValueError(f'{owner}: feat {tuple(feat.shape)} and labels '
                         f'{tuple(labels.shape)} differ in size')
    if not torch.isfinite(feat).all():
        raise ValueError(
            f'{owner}: the encoder produced NaN or infinite features for '
            f'{what} (are its weights finite? is the frame broken?)')
    if not torch.isfinite(labels).all():
        raise ValueError(f'{owner}: the labels of {what} contain NaN or '
                         'infinite values')
