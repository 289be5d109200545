from typing import Optional

import torch

from sfc_plugin.ops import (
    check_integer,
    check_match_settings,
    topk_window_match,
)
from sfc_plugin.registry import MODELS


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
    memory does not grow with the video length. The short-term slots form a
    ring: the order of key frames does not change a joint top-k.

    Args:
        topk (int): Neighbours per position, >= 1. Defaults to 10.
        radius (float): Window radius r' in feature pixels, >= 0; ``inf``
            means no window. Defaults to 12.
        context_frames (int): m, the short-term memory, in [0, 10000].
            Defaults to 20.
        temperature (float): Softmax temperature τ, finite and > 0.
            Defaults to 0.05.
        restrict_first_frame (bool): Apply the window to frame 0 too.
            Defaults to False (the reference's protocol).

    Raises:
        ValueError: A setting of the wrong type or out of range, named.

    Example:
        >>> prop = LabelPropagator(topk=10, radius=12, context_frames=20)
        >>> prop.init(feat0, labels0)       # (C, h, w), (K, h, w)
        >>> for feat in later_feats:
        ...     labels = prop.step(feat)    # (K, h, w) soft labels
    """

    #: Upper bound on ``context_frames``: 1 + m frame buffers are
    #: preallocated, and the protocols use m <= 20.
    MAX_CONTEXT_FRAMES = 10_000

    def __init__(self,
                 topk: int = 10,
                 radius: float = 12,
                 context_frames: int = 20,
                 temperature: float = 0.05,
                 restrict_first_frame: bool = False):
        owner = 'LabelPropagator'
        # The op's own rules, so that a bad config fails here, when the
        # model is built, not at the first frame of a video.
        self.topk, self.radius, self.temperature = check_match_settings(
            owner, topk, radius, temperature)
        context_frames = check_integer(owner, 'context_frames',
                                       context_frames)
        if not 0 <= context_frames <= self.MAX_CONTEXT_FRAMES:
            raise ValueError(
                f'{owner}: context_frames must be in [0, '
                f'{self.MAX_CONTEXT_FRAMES}] (1 + context_frames frames of '
                f'features and labels are preallocated), got {context_frames}')
        if not isinstance(restrict_first_frame, bool):
            raise ValueError(f'{owner}: restrict_first_frame must be a bool, '
                             f'got {restrict_first_frame!r}')
        self.context_frames = context_frames
        self.restrict_first_frame = restrict_first_frame
        self._feats: Optional[torch.Tensor] = None
        self._labels: Optional[torch.Tensor] = None
        self._t = 0

    @property
    def frame_index(self) -> int:
        """Index of the last frame seen (0 after :meth:`init`)."""
        return self._t

    def init(self, feat: torch.Tensor, labels: torch.Tensor) -> None:
        """Starts a video from frame 0's features and labels.

        Args:
            feat (Tensor): (C, h, w) unit-norm features of frame 0.
            labels (Tensor): (K, h, w) labels of frame 0 at feature
                resolution (one channel per class, background included).
        """
        if feat.dim() != 3 or labels.dim() != 3:
            raise ValueError('LabelPropagator.init: need feat (C, h, w) and '
                             f'labels (K, h, w), got {tuple(feat.shape)} and '
                             f'{tuple(labels.shape)}')
        if feat.shape[1:] != labels.shape[1:]:
            raise ValueError(
                f'LabelPropagator.init: feat {tuple(feat.shape)} and labels '
                f'{tuple(labels.shape)} differ in size')
        # Checked once here (one frame, cheap): otherwise frame 0's bad
        # features surface at frame 1 as the op's 'keys contain NaN'.
        if not torch.isfinite(feat).all():
            raise ValueError(
                'LabelPropagator.init: the encoder produced NaN or infinite '
                'features for frame 0 (are its weights finite? is the frame '
                'broken?)')
        if not torch.isfinite(labels).all():
            raise ValueError('LabelPropagator.init: the labels of frame 0 '
                             'contain NaN or infinite values')
        slots = 1 + self.context_frames
        # Channels-last: topk_window_match reads windows of positions as
        # C-contiguous rows, so this layout spares it a copy of all keys.
        self._feats = torch.empty((slots, *feat.shape), dtype=feat.dtype,
                                  device=feat.device,
                                  memory_format=torch.channels_last)
        self._labels = labels.new_empty((slots, *labels.shape))
        self._feats.copy_(feat.expand_as(self._feats))
        self._labels.copy_(labels.expand_as(self._labels))
        self._t = 0

    def step(self, feat: torch.Tensor) -> torch.Tensor:
        """Propagates to the next frame and remembers it.

        Args:
            feat (Tensor): (C, h, w) unit-norm features of frame t.

        Returns:
            Tensor: (K, h, w) soft labels of frame t.
        """
        if self._feats is None:
            raise RuntimeError('LabelPropagator.step called before init')
        if feat.shape != self._feats.shape[1:]:
            raise ValueError(
                f'LabelPropagator.step: frame features {tuple(feat.shape)} '
                f'differ from frame 0\'s {tuple(self._feats.shape[1:])}')
        labels = topk_window_match(
            feat,
            self._feats,
            self._labels,
            topk=self.topk,
            radius=self.radius,
            temperature=self.temperature,
            unrestricted_keys=0 if self.restrict_first_frame else 1)
        self._t += 1
        if self.context_frames:
            slot = 1 + (self._t - 1) % self.context_frames
            self._feats[slot].copy_(feat)
            self._labels[slot].copy_(labels)
        return labels

    def reset(self) -> None:
        """Releases the context buffers."""
        self._feats = self._labels = None
        self._t = 0
