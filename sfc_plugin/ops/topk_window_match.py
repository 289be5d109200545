"""Top-k windowed matching: the label-propagation step of the CRW protocol.

This module holds the contract and the pure-PyTorch implementation; native
kernels (the custom-op issue) slot in behind :func:`topk_window_match` without
changing its callers.
"""
import math
from typing import Optional

import torch

#: Affinity rows processed at once are capped so that one chunk of the
#: (queries × keys) affinity stays near this many bytes.
CHUNK_BYTES = 128 * 2**20


def _check(query: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor,
           topk: int, radius: float, temperature: float,
           unrestricted_keys: int) -> None:
    if query.dim() != 3:
        raise ValueError(f'topk_window_match: query must be (C, H, W), got '
                         f'shape {tuple(query.shape)}')
    if keys.dim() != 4:
        raise ValueError(f'topk_window_match: keys must be (T, C, H, W), got '
                         f'shape {tuple(keys.shape)}')
    if key_labels.dim() != 4:
        raise ValueError('topk_window_match: key_labels must be (T, K, H, W), '
                         f'got shape {tuple(key_labels.shape)}')
    if keys.shape[1:] != query.shape:
        raise ValueError(f'topk_window_match: keys {tuple(keys.shape)} do not '
                         f'match query {tuple(query.shape)} in C, H, W')
    if (key_labels.shape[0] != keys.shape[0]
            or key_labels.shape[2:] != keys.shape[2:]):
        raise ValueError(
            f'topk_window_match: key_labels {tuple(key_labels.shape)} do not '
            f'match keys {tuple(keys.shape)} in T, H, W')
    if keys.shape[0] < 1:
        raise ValueError('topk_window_match: need at least one key frame')
    if int(topk) < 1:
        raise ValueError(f'topk_window_match: topk must be >= 1, got {topk}')
    if not radius >= 0:
        raise ValueError(
            f'topk_window_match: radius must be >= 0, got {radius}')
    if not temperature > 0:
        raise ValueError('topk_window_match: temperature must be > 0, got '
                         f'{temperature}')
    if not 0 <= unrestricted_keys <= keys.shape[0]:
        raise ValueError(
            'topk_window_match: unrestricted_keys must be in '
            f'[0, T={keys.shape[0]}], got {unrestricted_keys}')


def window_mask(height: int, width: int, radius: float,
                rows: Optional[slice] = None,
                device: Optional[torch.device] = None) -> torch.Tensor:
    """Which key positions lie within ``radius`` of each query position.

    Args:
        height (int): Feature map height H.
        width (int): Feature map width W.
        radius (float): Euclidean distance in feature pixels; a key is
            eligible iff its distance is strictly below it.
        rows (slice, optional): Query positions (row-major indices into the
            H·W grid) to compute; all by default.

    Returns:
        Tensor: (Q, H·W) boolean mask.
    """
    pos = torch.stack(
        torch.meshgrid(
            torch.arange(height, device=device, dtype=torch.float64),
            torch.arange(width, device=device, dtype=torch.float64),
            indexing='ij'),
        dim=-1).reshape(-1, 2)
    q = pos if rows is None else pos[rows]
    return torch.cdist(q, pos) < radius


def topk_window_match(query: torch.Tensor,
                      keys: torch.Tensor,
                      key_labels: torch.Tensor,
                      *,
                      topk: int,
                      radius: float,
                      temperature: float,
                      unrestricted_keys: int = 1) -> torch.Tensor:
    """Propagates key labels to a query frame by top-k windowed matching.

    Each query position takes the ``topk`` largest affinities (dot products
    of the unit-norm features, divided by ``temperature``) over all eligible
    key positions of all T key frames jointly, applies a softmax over them and
    returns the weighted sum of those keys' labels. The first
    ``unrestricted_keys`` key frames are eligible everywhere; in the others
    only positions within Euclidean distance ``< radius`` (feature pixels) of
    the query position are.

    Defined edge cases: with fewer than ``topk`` eligible keys all of them
    are used; a query position with no eligible key (``radius=0`` and
    ``unrestricted_keys=0``) gets an all-zero label vector.

    Args:
        query (Tensor): (C, H, W) features of the target frame.
        keys (Tensor): (T, C, H, W) features of the key frames.
        key_labels (Tensor): (T, K, H, W) label maps of the key frames.
        topk (int): Neighbours per query position.
        radius (float): Window radius for the restricted key frames.
        temperature (float): Softmax temperature τ.
        unrestricted_keys (int): Leading key frames matched over all
            positions. Defaults to 1 (the first frame).

    Returns:
        Tensor: (K, H, W) propagated labels, in ``key_labels``' dtype.
    """
    _check(query, keys, key_labels, topk, radius, temperature,
           unrestricted_keys)
    num_frames, channels, height, width = keys.shape
    num_pos = height * width
    num_labels = key_labels.shape[1]
    q = query.reshape(channels, num_pos).t()
    k = keys.reshape(num_frames, channels, num_pos).transpose(1, 2).reshape(
        num_frames * num_pos, channels)
    labels = key_labels.reshape(num_frames, num_labels, num_pos).transpose(
        1, 2).reshape(num_frames * num_pos, num_labels)
    restricted = num_frames - unrestricted_keys
    k_eff = min(int(topk), num_frames * num_pos)

    out = key_labels.new_zeros(num_pos, num_labels)
    rows_per_chunk = max(
        1, CHUNK_BYTES // (num_frames * num_pos * q.element_size()))
    for start in range(0, num_pos, rows_per_chunk):
        rows = slice(start, min(start + rows_per_chunk, num_pos))
        aff = (q[rows] @ k.t()).div_(temperature).view(-1, num_frames,
                                                       num_pos)
        if restricted:
            outside = ~window_mask(height, width, radius, rows, q.device)
            aff[:, unrestricted_keys:].masked_fill_(outside[:, None],
                                                    -math.inf)
        vals, idx = aff.view(aff.shape[0], -1).topk(k_eff, dim=1)
        has_key = torch.isfinite(vals[:, 0])
        weights = torch.softmax(vals, dim=1).nan_to_num_(0.0)
        chunk = torch.einsum('qk,qkl->ql', weights.to(labels.dtype),
                             labels[idx])
        out[rows] = torch.where(has_key[:, None], chunk, 0)
    return out.t().reshape(num_labels, height, width)
