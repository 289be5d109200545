"""ResNet with per-stage strides and a choice of output stages.

The parameter names follow torchvision's ResNet (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer1.0.downsample.0`` ...), so torchvision-style and
MoCo/SimCLR/BYOL checkpoints load without renaming; torchvision itself is not
needed.
"""
from typing import Dict, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule

from sfc_plugin.registry import MODELS


def _norm(norm_cfg: Dict, channels: int) -> nn.Module:
    return build_norm_layer(norm_cfg, channels)[1]


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with an identity shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self,
                 in_channels: int,
                 channels: int,
                 stride: int = 1,
                 downsample: Optional[nn.Module] = None,
                 norm_cfg: Dict = dict(type='BN')):
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm(norm_cfg, channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = _norm(norm_cfg, channels)
        self.downsample = downsample

    @property
    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 → 3×3 → 1×1 bottleneck, stride on the 3×3 (ResNet-50/101, v1.5)."""

    expansion = 4

    def __init__(self,
                 in_channels: int,
                 channels: int,
                 stride: int = 1,
                 downsample: Optional[nn.Module] = None,
                 norm_cfg: Dict = dict(type='BN')):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = _norm(norm_cfg, channels)
        self.conv2 = nn.Conv2d(
            channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _norm(norm_cfg, channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = _norm(norm_cfg, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


@MODELS.register_module()
class ResNet(BaseModule):
    """ResNet backbone for dense features (no pooling, no classifier).

    The stem (7×7 conv, stride 2, and a stride-2 max-pool) is followed by up
    to four residual stages. ``strides`` sets the stride of each stage, so the
    dense variants used for correspondence keep ``layer3`` and ``layer4`` at
    stride 1 (output stride 8: a 256×256 crop gives a 32×32 map); every conv
    of such a stage, the 1×1 downsample conv included, then has stride 1.

    Args:
        depth (int): 18, 34, 50 or 101.
        num_stages (int): How many residual stages are built, 1–4. The
            correspondence features at test time come from ``layer3``, so a
            test-time network can drop ``layer4`` with ``num_stages=3``.
            Defaults to 4.
        strides (Sequence[int]): Stride of each of the ``num_stages`` stages.
            Defaults to (1, 2, 2, 2), the classification network (output
            stride 32); (1, 2, 1, 1) gives output stride 8.
        out_indices (Sequence[int]): Stages whose outputs are returned, 0-based
            (3 is ``layer4``). Defaults to (3,).
        norm_cfg (dict): Normalisation layer config, built by mmcv's
            ``build_norm_layer``. Defaults to ``dict(type='BN')``.
        zero_init_residual (bool): Zero-initialise the last norm of every
            residual block, so each block starts as the identity (the
            reference's initialisation). Defaults to True.
        init_cfg (dict, optional): mmengine initialisation config; when None,
            Kaiming-normal convs (fan-out, ReLU) and unit/zero norms are used.

    Shapes:
        input: (N, 3, H, W).
        output: a tuple with one (N, C_i, H / s_i, W / s_i) map per entry of
        ``out_indices``, with s_i the product of the strides up to stage i
        times 4 (stem), and C_i = 64·2^i·expansion.
    """

    arch_settings: Dict[int, Tuple[Type[Union[BasicBlock, Bottleneck]],
                                   Tuple[int, ...]]] = {
        18: (BasicBlock, (2, 2, 2, 2)),
        34: (BasicBlock, (3, 4, 6, 3)),
        50: (Bottleneck, (3, 4, 6, 3)),
        101: (Bottleneck, (3, 4, 23, 3)),
    }

    def __init__(self,
                 depth: int = 18,
                 num_stages: int = 4,
                 strides: Sequence[int] = (1, 2, 2, 2),
                 out_indices: Sequence[int] = (3, ),
                 norm_cfg: Dict = dict(type='BN'),
                 zero_init_residual: bool = True,
                 init_cfg: Optional[Dict] = None):
        super().__init__(init_cfg=init_cfg)
        if depth not in self.arch_settings:
            raise KeyError(f'ResNet: invalid depth={depth!r}, expected one of '
                           f'{sorted(self.arch_settings)}')
        if not 1 <= num_stages <= 4:
            raise ValueError(
                f'ResNet: num_stages must be in 1..4, got {num_stages}')
        strides = tuple(strides)
        if len(strides) != num_stages or any(s < 1 for s in strides):
            raise ValueError(
                f'ResNet: strides must hold {num_stages} positive integers '
                f'(one per stage), got {strides}')
        out_indices = tuple(out_indices)
        if not out_indices or any(not 0 <= i < num_stages
                                  for i in out_indices):
            raise ValueError(
                f'ResNet: out_indices must be non-empty stage indices in '
                f'0..{num_stages - 1}, got {out_indices}')

        self.depth = depth
        self.num_stages = num_stages
        self.strides = strides
        self.out_indices = out_indices
        self.zero_init_residual = zero_init_residual

        block, stage_blocks = self.arch_settings[depth]
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = _norm(norm_cfg, 64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        in_channels = 64
        self.stage_channels = []
        for i in range(num_stages):
            channels = 64 * 2**i
            layer = self._make_stage(block, in_channels, channels,
                                     stage_blocks[i], strides[i], norm_cfg)
            self.add_module(f'layer{i + 1}', layer)
            in_channels = channels * block.expansion
            self.stage_channels.append(in_channels)

    @staticmethod
    def _make_stage(block, in_channels: int, channels: int, num_blocks: int,
                    stride: int, norm_cfg: Dict) -> nn.Sequential:
        out_channels = channels * block.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(
                    in_channels, out_channels, 1, stride=stride, bias=False),
                _norm(norm_cfg, out_channels))
        layers = [
            block(in_channels, channels, stride, downsample, norm_cfg)
        ]
        layers += [
            block(out_channels, channels, norm_cfg=norm_cfg)
            for _ in range(1, num_blocks)
        ]
        return nn.Sequential(*layers)

    @property
    def out_channels(self) -> Tuple[int, ...]:
        """Channels of each returned map, in ``out_indices`` order."""
        return tuple(self.stage_channels[i] for i in self.out_indices)

    @property
    def output_stride(self) -> int:
        """Stride of the deepest returned map relative to the input."""
        stride = 4
        for s in self.strides[:max(self.out_indices) + 1]:
            stride *= s
        return stride

    def init_weights(self) -> None:
        if self.init_cfg is not None:
            super().init_weights()
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(
                    m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm,
                                nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_norm.weight)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(max(self.out_indices) + 1):
            x = getattr(self, f'layer{i + 1}')(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
