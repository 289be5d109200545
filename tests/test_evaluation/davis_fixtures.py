"""Generated DAVIS-format data: palette PNG masks, JPEG frames, lists."""
from pathlib import Path

import numpy as np

from sfc_plugin.datasets.synthetic_video import write_davis_sequences


def moving_squares(num_frames, h, w, num_objects, seed=0):
    """Frames with coloured squares drifting right, and their id masks."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, [h // 2, w // 2], size=(num_objects, 2))
    colors = rng.integers(40, 255, size=(num_objects, 3))
    frames, masks = [], []
    for t in range(num_frames):
        img = np.full((h, w, 3), 20, np.uint8)
        mask = np.zeros((h, w), np.uint8)
        for o in range(num_objects):
            y, x = starts[o]
            x = x + 2 * t
            img[y:y + h // 4, x:x + w // 5] = colors[o]
            mask[y:y + h // 4, x:x + w // 5] = o + 1
        frames.append(img)
        masks.append(mask)
    return frames, masks


def write_davis(root: Path, videos: dict, binary=False, split='val.txt'):
    """videos: name -> (frames, masks). Returns the data root."""
    return Path(write_davis_sequences(str(root), videos, binary, split))
