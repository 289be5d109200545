from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule

from sfc_plugin.registry import MODELS


@MODELS.register_module()
class ConvMLP(BaseModule):
    """Dense MLP head: 1×1 conv → norm → ReLU → 1×1 conv.

    The FC network uses it as the projector (512 → 2048 → 256) and the
    predictor (256 → 2048 → 256): BYOL's MLP heads applied at every position,
    so the feature map stays dense (paper §3.3).

    Args:
        in_channels (int): Input channels.
        hid_channels (int): Hidden channels. Defaults to 2048.
        out_channels (int): Output channels. Defaults to 256.
        norm_cfg (dict): Norm after the first conv. Defaults to BN.
        init_cfg (dict, optional): mmengine initialisation config.

    Shapes:
        input: (N, in_channels, H, W), or a tuple whose last element is such
        a map (a backbone's output).
        output: (N, out_channels, H, W).
    """

    def __init__(self,
                 in_channels: int,
                 hid_channels: int = 2048,
                 out_channels: int = 256,
                 norm_cfg: Dict = dict(type='BN'),
                 init_cfg: Optional[Union[Dict, Sequence[Dict]]] = None):
        super().__init__(init_cfg=init_cfg)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.mlp = nn.Sequential(
            nn.Conv2d(in_channels, hid_channels, 1, bias=False),
            build_norm_layer(norm_cfg, hid_channels)[1],
            nn.ReLU(inplace=True),
            nn.Conv2d(hid_channels, out_channels, 1),
        )

    def forward(
        self, x: Union[torch.Tensor, Tuple[torch.Tensor, ...]]
    ) -> torch.Tensor:
        if isinstance(x, (tuple, list)):
            x = x[-1]
        return self.mlp(x)
