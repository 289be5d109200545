"""Correspondence maps (paper Figure 5): where a source pixel matches.

Given a pixel of a source frame, the cosine similarity of its feature with
the feature of every position of a target frame, for each kind of feature
an encoder has: for SFC's :class:`FusedCorrespondenceEncoder` the semantic
(e.g. MoCo) features, the fine-grained (FC) features and their fusion; for
a single :class:`CorrespondenceEncoder` its features.
"""
from typing import Dict, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# Output names of the feature kinds, as the paper's Figure 5 labels them.
FEATURE_NAMES = dict(semantic='semantic', fine_grained='fc', fused='sfc')


def encoder_features(encoder: torch.nn.Module,
                     images: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Unit-norm features of each kind, keyed by :data:`FEATURE_NAMES`.

    Args:
        encoder (nn.Module): A correspondence encoder; one with
            ``forward_parts`` (the fused encoder) gives all its parts.
        images (Tensor): (N, 3, H, W) normalised images.

    Returns:
        dict: name → (N, C, h, w) features; ``features`` for an encoder
        without parts.
    """
    if hasattr(encoder, 'forward_parts'):
        parts = encoder.forward_parts(images)
        return {FEATURE_NAMES[k]: v for k, v in parts.items()}
    return dict(features=encoder(images))


def feature_cell(point: Tuple[float, float], image_size: Tuple[int, int],
                 feat_size: Tuple[int, int]) -> Tuple[int, int]:
    """(row, column) of the feature cell holding pixel ``point`` (x, y)."""
    (x, y), (h_img, w_img), (h, w) = point, image_size, feat_size
    if not (0 <= x < w_img and 0 <= y < h_img):
        raise ValueError(f'Point (x={x:g}, y={y:g}) lies outside the '
                         f'{w_img}×{h_img} source frame')
    return min(int(y * h / h_img), h - 1), min(int(x * w / w_img), w - 1)


@torch.no_grad()
def similarity_maps(encoder: torch.nn.Module, source: torch.Tensor,
                    target: torch.Tensor,
                    point: Tuple[float, float]) -> Dict[str, torch.Tensor]:
    """Cosine similarity of a source pixel with every target position.

    Args:
        encoder (nn.Module): Correspondence encoder (see
            :func:`encoder_features`).
        source (Tensor): (3, H, W) normalised source frame.
        target (Tensor): (3, H', W') normalised target frame.
        point (tuple[float, float]): (x, y) pixel of the source frame.

    Returns:
        dict: name → (h', w') similarities in [-1, 1] on the target's
        feature grid.
    """
    src = encoder_features(encoder, source[None])
    tgt = encoder_features(encoder, target[None])
    maps = {}
    for name, feat in src.items():
        row, col = feature_cell(point, tuple(source.shape[-2:]),
                                tuple(feat.shape[-2:]))
        query = feat[0, :, row, col]
        maps[name] = torch.einsum('c,chw->hw', query, tgt[name][0])
    return maps


def render_heatmap(similarity: torch.Tensor, image: np.ndarray,
                   alpha: float = 0.6) -> np.ndarray:
    """A similarity map as a colour heat map over a frame (red = high).

    The map is resized bilinearly to the frame and scaled from its minimum
    (blue) to its maximum (red).

    Args:
        similarity (Tensor): (h, w) map.
        image (np.ndarray): (H, W, 3) uint8 BGR frame.
        alpha (float): Opacity of the heat map. Defaults to 0.6.

    Returns:
        np.ndarray: (H, W, 3) uint8 BGR.
    """
    full = F.interpolate(
        similarity[None, None].float().cpu(), size=image.shape[:2],
        mode='bilinear', align_corners=False)[0, 0].numpy()
    low, high = float(full.min()), float(full.max())
    scaled = (full - low) / (high - low) if high > low else np.zeros_like(
        full)
    heat = cv2.applyColorMap((scaled * 255).astype(np.uint8),
                             cv2.COLORMAP_JET)
    return (image * (1 - alpha) + heat * alpha).astype(np.uint8)


def mark_point(image: np.ndarray, point: Tuple[float, float]) -> np.ndarray:
    """The frame with the chosen pixel circled in red."""
    out = image.copy()
    radius = max(3, int(round(np.hypot(*image.shape[:2]) / 80)))
    centre = (int(round(point[0])), int(round(point[1])))
    cv2.circle(out, centre, radius, (0, 0, 255), -1, cv2.LINE_AA)
    cv2.circle(out, centre, radius + 1, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def titled_panel(images: Dict[str, np.ndarray]) -> np.ndarray:
    """Images side by side at the first one's height, names above them."""
    bar = 28
    height = next(iter(images.values())).shape[0]
    tiles = []
    for name, img in images.items():
        if img.shape[0] != height:
            width = int(round(img.shape[1] * height / img.shape[0]))
            img = cv2.resize(img, (width, height),
                             interpolation=cv2.INTER_AREA)
        tile = np.full((img.shape[0] + bar, img.shape[1], 3), 255, np.uint8)
        tile[bar:] = img
        cv2.putText(tile, name, (6, bar - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.7,
                    (0, 0, 0), 2, cv2.LINE_AA)
        tiles.append(tile)
    return np.concatenate(tiles, axis=1)
