from typing import Dict, Optional

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule

from sfc_plugin.registry import MODELS

from .checkpoint_loading import load_backbone_checkpoint


@MODELS.register_module()
class CorrespondenceEncoder(BaseModule):
    """Dense features of one network, unit-normalised per position.

    Wraps a backbone (e.g. the FC ResNet-18 or a semantic ResNet-50, both at
    stride 8 with ``layer3`` as output) and, when ``checkpoint`` is given,
    loads it at construction through :func:`load_backbone_checkpoint`, so an
    evaluation config names each network's weights directly; without one the
    backbone keeps its own initialisation (``init_weights``).

    Args:
        backbone (dict): Backbone config; its last output is used.
        checkpoint (str, optional): Weights to load. Defaults to None.
        checkpoint_prefix (str): Key prefix in the checkpoint, or 'auto'.
            Defaults to 'auto'.
        init_cfg (dict, optional): mmengine initialisation config.

    Shapes:
        input: (N, 3, H, W) normalised images.
        output: (N, C, ⌈H/8⌉, ⌈W/8⌉) features of unit L2 norm.
    """

    def __init__(self,
                 backbone: Dict,
                 checkpoint: Optional[str] = None,
                 checkpoint_prefix: str = 'auto',
                 init_cfg: Optional[Dict] = None):
        super().__init__(init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        self.checkpoint = checkpoint
        if checkpoint is not None:
            load_backbone_checkpoint(self.backbone, checkpoint,
                                     checkpoint_prefix)
        else:
            # A random baseline gets the backbone's documented init (for
            # ResNet the reference's, zero-init residuals included unless
            # the config sets zero_init_residual=False), not torch's default.
            self.backbone.init_weights()

    @property
    def out_channels(self) -> int:
        return self.backbone.out_channels[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(images)[-1], dim=1)


@MODELS.register_module()
class FusedCorrespondenceEncoder(BaseModule):
    """SFC's late fusion of semantic and fine-grained features (paper eq. 7).

    ``F = L2(cat(L2(F_s), λ·L2(F_f)))``, so the affinity of two positions is
    ``(cos_s + λ²·cos_f) / (1 + λ²)``.

    Args:
        semantic (dict): Encoder config of the semantic network.
        fine_grained (dict): Encoder config of the FC network.
        fc_weight (float): λ. Defaults to 1.75 (DAVIS).

    Shapes:
        input: (N, 3, H, W) normalised images.
        output: (N, C_s + C_f, ⌈H/8⌉, ⌈W/8⌉) features of unit L2 norm.
    """

    def __init__(self,
                 semantic: Dict,
                 fine_grained: Dict,
                 fc_weight: float = 1.75,
                 init_cfg: Optional[Dict] = None):
        super().__init__(init_cfg=init_cfg)
        if fc_weight < 0:
            raise ValueError('FusedCorrespondenceEncoder: fc_weight must be '
                             f'>= 0, got {fc_weight}')
        self.semantic = MODELS.build(semantic)
        self.fine_grained = MODELS.build(fine_grained)
        self.fc_weight = fc_weight

    @property
    def out_channels(self) -> int:
        return self.semantic.out_channels + self.fine_grained.out_channels

    def forward_parts(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The features of each network and their fusion.

        Returns:
            dict: ``semantic`` (N, C_s, h, w) and ``fine_grained``
            (N, C_f, h, w), each of unit norm, and ``fused``, the output of
            :meth:`forward`.
        """
        fs = self.semantic(images)
        ff = self.fine_grained(images)
        if fs.shape[-2:] != ff.shape[-2:]:
            raise ValueError(
                'FusedCorrespondenceEncoder: semantic features '
                f'{tuple(fs.shape)} and fine-grained features '
                f'{tuple(ff.shape)} differ in size; both networks need the '
                'same output stride')
        fused = F.normalize(torch.cat([fs, self.fc_weight * ff], dim=1), dim=1)
        return dict(semantic=fs, fine_grained=ff, fused=fused)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_parts(images)['fused']
