"""Labels drawn over frames: the overlay video of tools/track.py."""
import cv2
import numpy as np

from sfc_plugin.utils.fileio import davis_palette

# BGR colour of each id, DAVIS's palette (the colours of the mask PNGs).
PALETTE_BGR = np.ascontiguousarray(
    np.asarray(davis_palette(), np.uint8).reshape(256, 3)[:, ::-1])
_PALETTE_LUT = PALETTE_BGR.reshape(256, 1, 3)


def draw_mask_overlay(image: np.ndarray,
                      ids: np.ndarray,
                      alpha: float = 0.5) -> np.ndarray:
    """Colours each labelled region of a frame and outlines it.

    Args:
        image (np.ndarray): (H, W, 3) uint8 BGR frame.
        ids (np.ndarray): (H, W) integer id map, 0 for background (left
            uncoloured).
        alpha (float): Opacity of the colours. Defaults to 0.5.

    Returns:
        np.ndarray: (H, W, 3) uint8 BGR.
    """
    if ids.shape != image.shape[:2]:
        raise ValueError(f'draw_mask_overlay: ids {ids.shape} and image '
                         f'{image.shape[:2]} differ in size')
    ids = np.ascontiguousarray(ids, dtype=np.uint8)
    # OpenCV's table look-up and blending: a 480p frame in a few ms, which
    # an overlay written at the tracker's frame rate needs.
    colours = cv2.LUT(cv2.merge([ids, ids, ids]), _PALETTE_LUT)
    blend = cv2.addWeighted(image, 1 - alpha, colours, alpha, 0)
    out = image.copy()
    np.copyto(out, blend, where=(ids > 0)[..., None])
    # A pixel is on a boundary when a 4-neighbour has another id.
    edge = np.zeros(ids.shape, bool)
    edge[1:] |= ids[1:] != ids[:-1]
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge &= ids > 0
    np.copyto(out, colours, where=edge[..., None])
    return out


def draw_keypoints(image: np.ndarray, joints: np.ndarray,
                   radius: int = 0) -> np.ndarray:
    """Draws keypoint j as a disc of palette colour j + 1, outlined white.

    Args:
        image (np.ndarray): (H, W, 3) uint8 BGR frame.
        joints (np.ndarray): (J, 2) (x, y) pixel coordinates.
        radius (int): Disc radius; 0 picks 1/100 of the frame's diagonal
            (at least 2). Defaults to 0.

    Returns:
        np.ndarray: (H, W, 3) uint8 BGR.
    """
    out = image.copy()
    if radius <= 0:
        radius = max(2, int(round(np.hypot(*image.shape[:2]) / 100)))
    for j, (x, y) in enumerate(np.asarray(joints, np.float64)):
        if not np.isfinite([x, y]).all():
            continue
        centre = (int(round(x)), int(round(y)))
        colour = tuple(int(c) for c in PALETTE_BGR[(j + 1) % 256])
        cv2.circle(out, centre, radius, colour, -1, cv2.LINE_AA)
        cv2.circle(out, centre, radius, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def mark_anchor_frame(image: np.ndarray) -> np.ndarray:
    """Marks a frame whose labels were given (an anchor): a yellow border
    and the word "anchor" in the top-left corner.

    Args:
        image (np.ndarray): (H, W, 3) uint8 BGR frame (an overlay).

    Returns:
        np.ndarray: (H, W, 3) uint8 BGR.
    """
    out = image.copy()
    h, w = out.shape[:2]
    thickness = max(2, int(round(min(h, w) / 100)))
    yellow = (0, 255, 255)
    cv2.rectangle(out, (0, 0), (w - 1, h - 1), yellow, thickness)
    scale = max(0.4, min(h, w) / 600)
    cv2.putText(out, 'anchor', (2 * thickness, 2 * thickness + int(20 *
                                                                   scale)),
                cv2.FONT_HERSHEY_SIMPLEX, scale, yellow,
                max(1, thickness // 2), cv2.LINE_AA)
    return out
