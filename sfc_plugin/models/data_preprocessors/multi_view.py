from typing import List, Sequence, Union

import torch
from mmengine.model import BaseDataPreprocessor

from sfc_plugin.registry import MODELS


@MODELS.register_module()
class MultiViewDataPreprocessor(BaseDataPreprocessor):
    """Normalises the views of each sample and batches them view by view.

    Args:
        mean (Sequence[float]): Per-channel mean, in the channel order after
            the optional BGR→RGB swap. Defaults to ImageNet's, in 0–255 units.
        std (Sequence[float]): Per-channel std. Defaults to ImageNet's.
        bgr_to_rgb (bool): Swap channels of the (OpenCV, BGR) input.
            Defaults to True.

    Input ``data['inputs']``: a (N, V, 3, H, W) uint8 tensor (default
    collate) or a list of N (V, 3, H, W) tensors (pseudo collate).
    Output ``inputs``: a list of V float tensors of shape (N, 3, H, W).
    """

    def __init__(self,
                 mean: Sequence[float] = (123.675, 116.28, 103.53),
                 std: Sequence[float] = (58.395, 57.12, 57.375),
                 bgr_to_rgb: bool = True,
                 non_blocking: bool = True):
        super().__init__(non_blocking=non_blocking)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError('MultiViewDataPreprocessor: mean and std need 3 '
                             f'values each, got mean={mean}, std={std}')
        if any(s <= 0 for s in std):
            raise ValueError(
                f'MultiViewDataPreprocessor: std must be positive, got {std}')
        self.register_buffer(
            'mean', torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1),
            persistent=False)
        self.register_buffer(
            'std', torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1),
            persistent=False)
        self.bgr_to_rgb = bgr_to_rgb

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        inputs: Union[torch.Tensor, List[torch.Tensor]] = data['inputs']
        if isinstance(inputs, (list, tuple)):
            inputs = torch.stack(list(inputs))
        if inputs.dim() != 5 or inputs.shape[2] != 3:
            raise ValueError(
                'MultiViewDataPreprocessor: expected inputs of shape '
                f'(N, V, 3, H, W), got {tuple(inputs.shape)}')
        if self.bgr_to_rgb:
            inputs = inputs.flip(2)
        views = [(v.float() - self.mean) / self.std for v in inputs.unbind(1)]
        return dict(inputs=views, data_samples=data.get('data_samples'))
