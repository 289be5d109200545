"""Generated DAVIS-format data: palette PNG masks, JPEG frames, lists."""
from pathlib import Path

import cv2
import numpy as np

from sfc_plugin.evaluation.metrics import save_palette_png


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
    for name, (frames, masks) in videos.items():
        for t, (img, mask) in enumerate(zip(frames, masks)):
            fdir = root / 'JPEGImages' / '480p' / name
            adir = root / 'Annotations' / '480p' / name
            fdir.mkdir(parents=True, exist_ok=True)
            adir.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(fdir / f'{t:05d}.jpg'), img,
                        [cv2.IMWRITE_JPEG_QUALITY, 98])
            if binary:
                cv2.imwrite(str(adir / f'{t:05d}.png'),
                            (mask > 0).astype(np.uint8) * 255)
            else:
                save_palette_png(mask, str(adir / f'{t:05d}.png'))
    (root / 'ImageSets').mkdir(exist_ok=True)
    (root / 'ImageSets' / split).write_text('\n'.join(videos) + '\n')
    return root
