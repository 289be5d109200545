"""Between a task's labels and the soft label maps that are propagated."""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from sfc_plugin.registry import TASK_UTILS
from sfc_plugin.utils.memory import check_host_allocation
from sfc_plugin.utils.validation import check_integer, check_real


@TASK_UTILS.register_module()
class MaskCodec:
    """Object masks or part maps: one-hot channels, argmax back.

    Encoding one-hot encodes an (H, W) id map (background 0 included) and
    resizes it bilinearly to the feature grid; decoding resizes the soft maps
    bilinearly to the image size and takes the argmax.

    Args:
        num_classes (int, optional): Channels to encode. None (objects) uses
            ``max id + 1`` of the first frame; part maps set the number of
            classes so that classes absent from frame 0 still exist.
    """

    target_key = 'gt_seg_map'
    pred_key = 'pred_seg_map'

    #: Label maps are 8-bit images: ids 0..255.
    MAX_CLASSES = 256
    #: Bytes of full-resolution one-hot maps encoded at once.
    ONE_HOT_BYTES = 64 * 2**20

    def __init__(self, num_classes: Optional[int] = None):
        if num_classes is not None:
            # Encoding allocates num_classes channels per pixel.
            num_classes = check_integer(
                'MaskCodec', 'num_classes', num_classes, 2, self.MAX_CLASSES,
                ' (background included; label maps are 8-bit)')
        self.num_classes = num_classes

    def encode(self, labels: torch.Tensor, feat_size: Tuple[int, int],
               image_size: Tuple[int, int]) -> torch.Tensor:
        if tuple(labels.shape) != tuple(image_size):
            raise ValueError(f'MaskCodec: labels {tuple(labels.shape)} and '
                             f'frame {tuple(image_size)} differ in size')
        low, high = (int(v) for v in torch.aminmax(labels))
        if low < 0:
            raise ValueError(f'MaskCodec: label ids must be >= 0, got {low}')
        num = high + 1
        if self.num_classes is not None:
            if num > self.num_classes:
                raise ValueError(f'MaskCodec: label id {num - 1} is out of '
                                 f'range for num_classes={self.num_classes}')
            num = self.num_classes
        # One-hot maps at image resolution, a block of ids at a time: all
        # 255 of a 4K frame at once would take about 25 GB. Each block is
        # laid out as the one-hot of all ids was (channels last), so that
        # the resize runs the same kernel and gives the same values.
        ids = torch.arange(num, device=labels.device)
        block = max(1, self.ONE_HOT_BYTES // (4 * labels.numel()))
        maps = []
        for start in range(0, num, block):
            onehot = (labels[..., None] == ids[start:start + block]).permute(
                2, 0, 1).float()
            maps.append(F.interpolate(onehot[None], size=feat_size,
                                      mode='bilinear',
                                      align_corners=False)[0])
        return maps[0] if len(maps) == 1 else torch.cat(maps)

    def decode(self, soft: torch.Tensor,
               image_size: Tuple[int, int]) -> torch.Tensor:
        full = F.interpolate(
            soft[None], size=image_size, mode='bilinear',
            align_corners=False)[0]
        # max(0).indices is argmax(0), the first maximum included, but
        # reduces along the channel axis about 50x faster on CPU (argmax
        # over a strided axis: 30-70 ms per 480p frame here).
        return full.max(0).indices.to(torch.uint8)


@TASK_UTILS.register_module()
class KeypointCodec:
    """Keypoints: Gaussian heat maps on the feature grid, top-k decoding.

    Each of J keypoints becomes a Gaussian of ``sigma`` feature pixels on the
    feature grid, plus a background channel ``max(0, 1 - Σ_j heat_j)``;
    decoding takes, per keypoint channel, the weighted mean of the positions
    of its ``topk`` largest values (the CRW protocol: top-3).

    Coordinates are in pixels of the network input, x right and y down,
    pixel centres at integers; feature cell u covers input pixels
    ``[u·stride, (u+1)·stride)``.

    Args:
        sigma (float): Gaussian std in feature pixels. Defaults to 0.5.
        stride (int): Feature stride. Defaults to 8.
        topk (int): Positions averaged when decoding. Defaults to 3.
    """

    target_key = 'gt_joints'
    pred_key = 'pred_joints'
    #: Narrowest Gaussian, in feature pixels.
    MIN_SIGMA = 1e-3

    def __init__(self, sigma: float = 0.5, stride: int = 8, topk: int = 3):
        owner = 'KeypointCodec'
        sigma = check_real(owner, 'sigma', sigma)
        if not (math.isfinite(sigma) and sigma >= self.MIN_SIGMA):
            raise ValueError(
                f'{owner}: sigma must be a finite number >= {self.MIN_SIGMA:g}'
                f' feature pixels (narrower Gaussians are points, and below '
                f'1e-154 the heat maps are NaN), got {sigma}')
        self.sigma = sigma
        self.stride = check_integer(owner, 'stride', stride, low=1)
        self.topk = check_integer(owner, 'topk', topk, low=1)

    def to_feature(self, xy: torch.Tensor) -> torch.Tensor:
        return (xy + 0.5) / self.stride - 0.5

    def to_image(self, uv: torch.Tensor) -> torch.Tensor:
        return (uv + 0.5) * self.stride - 0.5

    def encode(self, joints: torch.Tensor, feat_size: Tuple[int, int],
               image_size: Tuple[int, int]) -> torch.Tensor:
        if joints.dim() != 2 or joints.shape[1] != 2:
            raise ValueError('KeypointCodec: joints must be (J, 2) (x, y), '
                             f'got {tuple(joints.shape)}')
        h, w = feat_size
        if joints.device.type == 'cpu':
            # Squared distances, Gaussians and the result: three maps a
            # keypoint.
            check_host_allocation(
                'KeypointCodec',
                3 * (joints.shape[0] + 1) * h * w * torch.float32.itemsize,
                f'the heat maps of {joints.shape[0]} keypoints on the '
                f'{h}×{w} feature grid', 'track fewer keypoints')
        uv = self.to_feature(joints.float())
        v, u = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=joints.device),
            torch.arange(w, dtype=torch.float32, device=joints.device),
            indexing='ij')
        d2 = (u[None] - uv[:, 0, None, None])**2 + (
            v[None] - uv[:, 1, None, None])**2
        heat = torch.exp(-d2 / (2 * self.sigma**2))
        background = (1 - heat.sum(0, keepdim=True)).clamp_(min=0)
        return torch.cat([heat, background])

    def decode(self, soft: torch.Tensor,
               image_size: Tuple[int, int]) -> torch.Tensor:
        heat = soft[:-1]
        num, h, w = heat.shape
        vals, idx = heat.reshape(num, -1).topk(min(self.topk, h * w), dim=1)
        uv = torch.stack([idx % w, idx // w], dim=-1).to(vals.dtype)
        wts = vals.clamp(min=0)
        wts = torch.where(
            wts.sum(1, keepdim=True) > 0, wts, torch.ones_like(wts))
        uv = (wts[..., None] * uv).sum(1) / wts.sum(1)[:, None]
        return self.to_image(uv)
