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


def _weighted_topk(aff: torch.Tensor, labels: torch.Tensor,
                   topk: int) -> torch.Tensor:
    """Top-k of each row of ``aff`` (-inf where ineligible), softmax, and
    the weighted sum of the chosen candidates' labels; a row with no
    eligible candidate gives zeros.

    Args:
        aff (Tensor): (Q, N) affinities already divided by the temperature.
        labels (Tensor): (N, K) labels of the N candidates, or (Q, N, K)
            per row.

    Returns:
        Tensor: (Q, K).
    """
    vals, idx = aff.topk(min(topk, aff.shape[1]), dim=1)
    has_key = torch.isfinite(vals[:, 0])
    weights = torch.softmax(vals, dim=1).nan_to_num_(0.0)
    chosen = labels[idx] if labels.dim() == 2 else labels.gather(
        1, idx[..., None].expand(-1, -1, labels.shape[-1]))
    out = torch.einsum('qk,qkl->ql', weights.to(labels.dtype), chosen)
    return torch.where(has_key[:, None], out, 0)


def topk_window_match(query: torch.Tensor,
                      keys: torch.Tensor,
                      key_labels: torch.Tensor,
                      *,
                      topk: int,
                      radius: float,
                      temperature: float,
                      unrestricted_keys: int = 1,
                      tile_size: int = 8) -> torch.Tensor:
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

    This pure-PyTorch implementation never builds the dense affinity: the
    query positions go in ``tile_size``² tiles, and a tile is scored against
    the unrestricted frames and against the union of its positions' windows
    in the restricted frames only. Keys stored channels-last
    (``memory_format=torch.channels_last``) are used without a copy.

    Args:
        query (Tensor): (C, H, W) features of the target frame.
        keys (Tensor): (T, C, H, W) features of the key frames.
        key_labels (Tensor): (T, K, H, W) label maps of the key frames.
        topk (int): Neighbours per query position.
        radius (float): Window radius for the restricted key frames.
        temperature (float): Softmax temperature τ.
        unrestricted_keys (int): Leading key frames matched over all
            positions. Defaults to 1 (the first frame).
        tile_size (int): Side of the query tiles. Defaults to 8.

    Returns:
        Tensor: (K, H, W) propagated labels, in ``key_labels``' dtype.
    """
    _check(query, keys, key_labels, topk, radius, temperature,
           unrestricted_keys)
    num_frames, channels, height, width = keys.shape
    num_labels = key_labels.shape[1]
    topk = int(topk)
    free = unrestricted_keys
    keys_hwc = keys.permute(0, 2, 3, 1).contiguous()
    labels_hwk = key_labels.permute(0, 2, 3, 1).contiguous()
    query_hwc = query.permute(1, 2, 0)
    free_keys = keys_hwc[:free].reshape(-1, channels)
    free_labels = labels_hwk[:free].reshape(-1, num_labels)
    # Offsets d with |d| < radius: a window reaches `reach` cells each way.
    reach = math.ceil(radius) - 1
    windowed = num_frames > free and reach >= 0
    outside_masks = {}

    out = key_labels.new_zeros(height, width, num_labels)
    for y0 in range(0, height, tile_size):
        y1 = min(y0 + tile_size, height)
        for x0 in range(0, width, tile_size):
            x1 = min(x0 + tile_size, width)
            q = query_hwc[y0:y1, x0:x1].reshape(-1, channels)
            # Top-k of each candidate group, then of their union: the
            # joint top-k without concatenating the affinities.
            vals, labels = [], []
            if free:
                v, i = (q @ free_keys.t()).topk(
                    min(topk, free_keys.shape[0]), dim=1)
                vals.append(v)
                labels.append(free_labels[i])
            if windowed:
                ky0, ky1 = max(0, y0 - reach), min(height, y1 + reach)
                kx0, kx1 = max(0, x0 - reach), min(width, x1 + reach)
                geometry = (y1 - y0, x1 - x0, y0 - ky0, x0 - kx0, ky1 - ky0,
                            kx1 - kx0)
                if geometry not in outside_masks:
                    outside_masks[geometry] = _outside_window(
                        *geometry, radius, query.device)
                rect = keys_hwc[free:, ky0:ky1, kx0:kx1].reshape(-1, channels)
                aff = (q @ rect.t()).view(q.shape[0], num_frames - free, -1)
                aff.masked_fill_(outside_masks[geometry][:, None], -math.inf)
                v, i = aff.view(q.shape[0], -1).topk(
                    min(topk, rect.shape[0]), dim=1)
                vals.append(v)
                labels.append(labels_hwk[free:, ky0:ky1, kx0:kx1].reshape(
                    -1, num_labels)[i])
            if not vals:
                continue
            tile_out = _weighted_topk(
                torch.cat(vals, dim=1).div_(temperature),
                torch.cat(labels, dim=1), topk)
            out[y0:y1, x0:x1] = tile_out.view(y1 - y0, x1 - x0, num_labels)
    return out.permute(2, 0, 1).contiguous()


def _outside_window(tile_h: int, tile_w: int, off_y: int, off_x: int,
                    rect_h: int, rect_w: int, radius: float,
                    device) -> torch.Tensor:
    """(tile positions, rectangle positions) mask of pairs at distance >=
    radius; the tile's top-left cell is (off_y, off_x) in the rectangle."""
    qy, qx = torch.meshgrid(
        torch.arange(tile_h, device=device) + off_y,
        torch.arange(tile_w, device=device) + off_x, indexing='ij')
    ky, kx = torch.meshgrid(
        torch.arange(rect_h, device=device),
        torch.arange(rect_w, device=device), indexing='ij')
    dist2 = (qy.reshape(-1, 1) - ky.reshape(1, -1))**2 + (
        qx.reshape(-1, 1) - kx.reshape(1, -1))**2
    return dist2 >= radius * radius


def topk_window_match_dense(query: torch.Tensor,
                            keys: torch.Tensor,
                            key_labels: torch.Tensor,
                            *,
                            topk: int,
                            radius: float,
                            temperature: float,
                            unrestricted_keys: int = 1) -> torch.Tensor:
    """Dense form of :func:`topk_window_match`, as the CRW protocol computes
    it: the affinity of each chunk of query positions against every key
    position, masked to the windows. It scores all T·H·W keys for every
    query, and is kept as the baseline that benchmarks compare against.

    Arguments, result and edge cases as :func:`topk_window_match`.
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
        out[rows] = _weighted_topk(aff.view(aff.shape[0], -1), labels,
                                   int(topk))
    return out.t().reshape(num_labels, height, width)
