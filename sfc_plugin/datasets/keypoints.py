import json
from typing import Optional, Tuple

import numpy as np


def read_keypoint_json(path: str,
                       image_size: Optional[Tuple[int, int]] = None
                       ) -> np.ndarray:
    """Reads a frame's keypoints: (J, 2) float32 pixel coordinates (x, y).

    The file holds a list of ``[x, y]`` pairs, or an object whose
    ``"keypoints"`` entry is that list (other entries, e.g. ``"names"``,
    are ignored). Pixel centres are at integer coordinates.

    Args:
        path (str): The JSON file.
        image_size (tuple[int, int], optional): (height, width) of the frame
            the keypoints belong to; every keypoint must lie inside it.

    Raises:
        OSError: The file cannot be read or is not JSON.
        ValueError: No keypoint, an entry that is not two finite numbers, or
            a keypoint outside the frame; the message names the file and the
            entry.
    """
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError) as err:
        # RecursionError: lists nested thousands deep.
        raise OSError(f'Cannot read keypoints "{path}": {err}') from err
    if isinstance(data, dict):
        if 'keypoints' not in data:
            raise ValueError(f'Keypoints "{path}": a JSON object needs a '
                             '"keypoints" entry (a list of [x, y] pairs)')
        data = data['keypoints']
    if not isinstance(data, list) or not data:
        raise ValueError(f'Keypoints "{path}": expected a non-empty list of '
                         '[x, y] pairs')
    for j, point in enumerate(data):
        if (not isinstance(point, (list, tuple)) or len(point) != 2
                or not all(isinstance(v, (int, float))
                           and not isinstance(v, bool) for v in point)
                or not all(np.isfinite(point))):
            raise ValueError(f'Keypoints "{path}": entry {j} is {point!r}, '
                             'not a pair of finite numbers [x, y]')
    joints = np.asarray(data, dtype=np.float32)
    if image_size is not None:
        h, w = image_size
        outside = ((joints[:, 0] < -0.5) | (joints[:, 0] > w - 0.5)
                   | (joints[:, 1] < -0.5) | (joints[:, 1] > h - 0.5))
        if outside.any():
            j = int(np.flatnonzero(outside)[0])
            raise ValueError(
                f'Keypoints "{path}": keypoint {j} at (x={joints[j, 0]:g}, '
                f'y={joints[j, 1]:g}) lies outside the {w}×{h} frame')
    return joints
