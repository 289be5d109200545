import copy
import math
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.structures import BaseDataElement

from sfc_plugin.models.losses import dense_cosine_loss, positive_mask
from sfc_plugin.registry import MODELS
from sfc_plugin.utils.validation import check_real


@MODELS.register_module()
class FineGrainedCorrespondence(BaseModel):
    """Fine-grained correspondence (FC) network: a dense BYOL.

    Implementation of the FC branch of `Semantic-Aware Fine-Grained
    Correspondence <https://arxiv.org/abs/2207.10456>`_ (Hu et al., ECCV
    2022, §3.3). Two random crops of one frame go through an online encoder
    (backbone + projector + predictor) and a target encoder (an exponential
    moving average of backbone + projector, no predictor, no gradient). Every
    online prediction is pulled towards the target projections of the other
    view's cells that lie within ``positive_radius`` cell diagonals of it in
    the original image.

    The target is updated as ``ξ ← m·ξ + (1 - m)·θ`` right before each target
    forward, parameters only (BN running statistics are not averaged, and the
    target runs in train mode like the reference). ``target_momentum`` is m;
    :class:`~sfc_plugin.engine.hooks.CosineTargetMomentumHook` anneals it.

    Args:
        backbone (dict): Backbone config, e.g. a stride-8 ResNet-18.
        projector (dict): Projector config (dense MLP, 512 → 2048 → 256).
        predictor (dict): Predictor config (dense MLP, 256 → 2048 → 256).
        positive_radius (float): r of eq. 4, in cell diagonals.
            Defaults to 0.5.
        loss_weight (float): Factor on the symmetrised loss. Defaults to 2.0,
            the reference's scale, so the loss lies in [-4, 4].
        base_momentum (float): Target momentum until a hook sets it.
            Defaults to 0.99.
        channels_last (bool): Keep the conv weights, and the views given to
            :meth:`loss`, in channels-last memory format: cuDNN's tensor-core
            convolutions under AMP run on it without layout conversions.
            The numbers are the same up to the convolution algorithms'
            rounding. Defaults to False.
        data_preprocessor (dict, optional): Defaults to
            :class:`MultiViewDataPreprocessor` with ImageNet statistics.
        init_cfg (dict, optional): mmengine initialisation config.
    """

    #: Host bytes a position pair of one image's views takes at the peak
    #: of a CPU training step beyond what the saved tensors account for:
    #: positive_mask's float32 distance temporaries (up to 20 bytes a pair
    #: before the loss saves its own 8). Measured 5.1 (crop 768) and 7.3
    #: (crop 1024) bytes a pair beyond STEP_OVERHEAD times the saved
    #: tensors (benchmarks/training_memory.py, BENCHMARKS.md); 12 leaves a
    #: margin.
    PAIR_WORKSPACE_BYTES = 12

    def __init__(self,
                 backbone: Dict,
                 projector: Dict,
                 predictor: Dict,
                 positive_radius: float = 0.5,
                 loss_weight: float = 2.0,
                 base_momentum: float = 0.99,
                 channels_last: bool = False,
                 data_preprocessor: Optional[Dict] = None,
                 init_cfg: Optional[Dict] = None):
        if data_preprocessor is None:
            data_preprocessor = dict(type='MultiViewDataPreprocessor')
        super().__init__(
            data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        # NaN fails every comparison: it passed a `<= 0` check and trained
        # a model with no positive pair at all.
        positive_radius = check_real('FineGrainedCorrespondence',
                                     'positive_radius', positive_radius)
        if not 0 < positive_radius < math.inf:
            raise ValueError('FineGrainedCorrespondence: positive_radius must '
                             f'be a finite number > 0, got {positive_radius}')
        loss_weight = check_real('FineGrainedCorrespondence', 'loss_weight',
                                 loss_weight)
        if not math.isfinite(loss_weight):
            raise ValueError('FineGrainedCorrespondence: loss_weight must be '
                             f'finite, got {loss_weight}')
        base_momentum = check_real('FineGrainedCorrespondence',
                                   'base_momentum', base_momentum)
        if not 0.0 <= base_momentum <= 1.0:
            raise ValueError('FineGrainedCorrespondence: base_momentum must '
                             f'be in [0, 1], got {base_momentum}')
        if not isinstance(channels_last, bool):
            raise TypeError('FineGrainedCorrespondence: channels_last must be '
                            f'True or False, got {channels_last!r}')
        self.backbone = MODELS.build(backbone)
        self.projector = MODELS.build(projector)
        self.predictor = MODELS.build(predictor)
        self.target_net = nn.ModuleDict(
            dict(
                backbone=copy.deepcopy(self.backbone),
                projector=copy.deepcopy(self.projector)))
        self.target_net.requires_grad_(False)
        self.positive_radius = positive_radius
        self.loss_weight = loss_weight
        self.target_momentum = base_momentum
        self.channels_last = channels_last
        self._stride: Optional[int] = None
        if channels_last:
            # Before any wrapper (DDP) sees the parameters; initialisation,
            # checkpoint loading and optimiser steps write in place and keep
            # the format.
            self.to(memory_format=torch.channels_last)

    def init_weights(self) -> None:
        """Initialise the online network and copy it into the target."""
        super().init_weights()
        self.target_net['backbone'].load_state_dict(
            self.backbone.state_dict())
        self.target_net['projector'].load_state_dict(
            self.projector.state_dict())

    def _online_params(self) -> List[nn.Parameter]:
        return [*self.backbone.parameters(), *self.projector.parameters()]

    @torch.no_grad()
    def update_target(self, momentum: Optional[float] = None) -> None:
        """``ξ ← m·ξ + (1 - m)·θ`` over parameters (not buffers).

        Args:
            momentum (float, optional): m; defaults to ``target_momentum``.
        """
        m = self.target_momentum if momentum is None else momentum
        target = list(self.target_net.parameters())
        online = self._online_params()
        torch._foreach_mul_(target, m)
        torch._foreach_add_(target, online, alpha=1.0 - m)

    def loss_workspace_bytes(self, data: dict) -> int:
        """Host bytes one image's loss takes beyond the tensors the
        training forward keeps for its backward (which
        :func:`~sfc_plugin.engine.runner.training_memory.saved_tensor_bytes`
        counts), for the collated batch ``data``: the (P1, P2) position
        pair maps of :func:`positive_mask` and :func:`dense_cosine_loss`,
        :attr:`PAIR_WORKSPACE_BYTES` a pair. They grow with the square of
        the crop's area (crop 1024: 2.7e8 pairs an image), which probes
        at a small crop cannot show, so the training memory check asks.

        Args:
            data (dict): ``inputs`` (N, 2, 3, H, W) (or a list of views)
                as the data loader collates them.

        Returns:
            int: Bytes per image.
        """
        inputs = data['inputs']
        if isinstance(inputs, (list, tuple)):
            inputs = inputs[0]
        height, width = (int(s) for s in inputs.shape[-2:])
        if self._stride is None:
            # The backbone's output stride, from a small probe of a copy in
            # eval mode (the model's BatchNorm statistics stay as they are).
            backbone = copy.deepcopy(self.backbone).eval()
            with torch.no_grad():
                probe = torch.zeros(1, 3, 64, 64,
                                    device=next(self.parameters()).device)
                self._stride = 64 // backbone(probe)[-1].shape[-1]
        positions = -(-height // self._stride) * -(-width // self._stride)
        return int(self.PAIR_WORKSPACE_BYTES * positions * positions)

    def extract_feat(self, inputs: torch.Tensor) -> torch.Tensor:
        """Backbone features of a batch of images, (N, C, H/8, W/8)."""
        return self.backbone(inputs)[-1]

    def _crop_boxes(self, inputs: List[torch.Tensor],
                    data_samples: Optional[List[BaseDataElement]]
                    ) -> torch.Tensor:
        """Checks the inputs; returns the crop boxes, (N, 2, 4) float32."""
        num_views = len(inputs) if isinstance(inputs, (list, tuple)) else 0
        if num_views != 2:
            raise ValueError(
                'FineGrainedCorrespondence.loss: expected a list of two '
                f'views (N, 3, H, W), got {type(inputs).__name__} with '
                f'{num_views} views')
        if not data_samples or any('crop_boxes' not in ds
                                   for ds in data_samples):
            raise ValueError(
                'FineGrainedCorrespondence.loss: every data sample needs '
                '`crop_boxes` (2, 4); use TwoViewRandomResizedCrop and '
                'PackMultiViewInputs')
        boxes = torch.stack([ds.crop_boxes for ds in data_samples])
        n = len(inputs[0])
        if boxes.shape != (n, 2, 4):
            raise ValueError('FineGrainedCorrespondence.loss: crop_boxes must '
                             f'stack to ({n}, 2, 4), got {tuple(boxes.shape)}')
        return boxes.to(device=inputs[0].device, dtype=torch.float32)

    def loss(self, inputs: List[torch.Tensor],
             data_samples: List[BaseDataElement]) -> Dict[str, torch.Tensor]:
        """Symmetric dense loss of a batch of view pairs.

        Args:
            inputs (list[Tensor]): Two (N, 3, H, W) views.
            data_samples (list[BaseDataElement]): One per image, each with
                ``crop_boxes`` (2, 4): the views' normalised boxes.

        Returns:
            dict[str, Tensor]: ``loss`` and ``positive_pairs`` (mean number
            of positive pairs per image, for monitoring).
        """
        boxes = self._crop_boxes(inputs, data_samples)
        if self.channels_last:
            inputs = [v.contiguous(memory_format=torch.channels_last)
                      for v in inputs]
        # Views go through the networks one at a time, as in the reference:
        # batching them together would mix both views in the BN statistics.
        p1, p2 = (self.predictor(self.projector(self.extract_feat(v)))
                  for v in inputs)

        self.update_target()
        with torch.no_grad():
            z1, z2 = (self.target_net['projector'](
                self.target_net['backbone'](v)) for v in inputs)

        mask = positive_mask(boxes[:, 0], boxes[:, 1],
                             tuple(p1.shape[-2:]), tuple(z2.shape[-2:]),
                             self.positive_radius)
        loss = (dense_cosine_loss(p1.flatten(2), z2.flatten(2), mask) +
                dense_cosine_loss(p2.flatten(2), z1.flatten(2),
                                  mask.transpose(1, 2)))
        return dict(
            loss=self.loss_weight * loss.mean(),
            positive_pairs=mask.sum((1, 2)).float().mean().detach())

    def forward(self,
                inputs: Union[torch.Tensor, List[torch.Tensor]],
                data_samples: Optional[List[BaseDataElement]] = None,
                mode: str = 'tensor'):
        """mmengine's entry point.

        ``mode='loss'`` returns :meth:`loss`; ``mode='tensor'`` returns the
        backbone features of a (N, 3, H, W) batch (or of each view of a list).
        """
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'tensor':
            if isinstance(inputs, (list, tuple)):
                return [self.extract_feat(v) for v in inputs]
            return self.extract_feat(inputs)
        raise RuntimeError(f'FineGrainedCorrespondence: invalid mode '
                           f'"{mode}"; only "loss" and "tensor" are supported')
