"""A generated video with known object masks: the demo of tools/track.py.

Textured objects drift over a textured, slowly panning background on smooth
paths and pass in front of one another, so the video has what label
propagation has to get right (motion, occlusion, several objects) and its
ground truth is exact.
"""
import os.path as osp
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

from sfc_plugin.utils.fileio import save_palette_png, write_image, write_text

from .synthetic_frame_dataset import synthetic_frame


def synthetic_video(num_frames: int = 40,
                    size: Tuple[int, int] = (240, 432),
                    num_objects: int = 3,
                    seed: int = 0) -> Tuple[List[np.ndarray],
                                            List[np.ndarray]]:
    """Frames and their object-id masks.

    Object ``i`` (id ``i + 1``) is an ellipse cut from its own texture,
    moving on a Lissajous path; objects with higher ids are drawn in front.

    Args:
        num_frames (int): Video length. Defaults to 40.
        size (tuple[int, int]): (height, width). Defaults to (240, 432).
        num_objects (int): Objects, 1 to 255. Defaults to 3.
        seed (int): Same seed, same video. Defaults to 0.

    Returns:
        tuple: ``frames``, a list of (H, W, 3) uint8 BGR images, and
        ``masks``, a list of (H, W) uint8 id maps (0 for background).
    """
    if num_frames < 1:
        raise ValueError(f'synthetic_video: num_frames must be >= 1, got '
                         f'{num_frames}')
    if not 1 <= num_objects <= 255:
        raise ValueError('synthetic_video: num_objects must be in [1, 255], '
                         f'got {num_objects}')
    h, w = size
    if min(h, w) < 16:
        raise ValueError(f'synthetic_video: size must be at least 16×16, got '
                         f'{h}×{w}')
    rng = np.random.default_rng(seed)
    pan = max(w // 8, 1)
    background = synthetic_frame(seed, (h, w + pan))
    textures = [
        synthetic_frame(seed + 1000 + i, (h, w)) for i in range(num_objects)
    ]
    axes = rng.uniform([w / 14, h / 10], [w / 8, h / 5], (num_objects, 2))
    centre = rng.uniform([0.25 * w, 0.3 * h], [0.75 * w, 0.7 * h],
                         (num_objects, 2))
    amplitude = rng.uniform([0.1 * w, 0.08 * h], [0.25 * w, 0.2 * h],
                            (num_objects, 2))
    period = rng.uniform(1.5, 3.0, (num_objects, 2)) * max(num_frames, 8)
    phase = rng.uniform(0, 2 * np.pi, (num_objects, 2))
    angle0 = rng.uniform(0, 180, num_objects)
    spin = rng.uniform(-2, 2, num_objects)
    frames, masks = [], []
    for t in range(num_frames):
        x0 = int(round(pan * t / max(num_frames - 1, 1)))
        img = background[:, x0:x0 + w].copy()
        mask = np.zeros((h, w), np.uint8)
        for i in range(num_objects):
            cx, cy = centre[i] + amplitude[i] * np.sin(
                2 * np.pi * t / period[i] + phase[i])
            shape = np.zeros((h, w), np.uint8)
            cv2.ellipse(shape, (int(round(cx)), int(round(cy))),
                        (int(axes[i, 0]), int(axes[i, 1])),
                        float(angle0[i] + spin[i] * t), 0, 360, 1, -1)
            inside = shape.astype(bool)
            img[inside] = textures[i][inside]
            mask[inside] = i + 1
        frames.append(img)
        masks.append(mask)
    return frames, masks


def write_davis_sequences(root: str,
                          videos: Dict[str, Tuple[Sequence[np.ndarray],
                                                  Sequence[np.ndarray]]],
                          binary: bool = False,
                          split: str = 'val.txt',
                          jpeg_quality: int = 98) -> str:
    """Writes videos in the DAVIS layout that :class:`DAVISDataset` reads.

    ``root/JPEGImages/480p/<name>/%05d.jpg`` frames,
    ``root/Annotations/480p/<name>/%05d.png`` masks (palette PNGs of object
    ids, or 8-bit {0, 255} DAVIS-2016 masks with ``binary``) and
    ``root/ImageSets/<split>`` listing the videos.

    Args:
        root (str): Data root to write.
        videos (dict): Name → (frames, masks), as :func:`synthetic_video`
            returns them.
        binary (bool): DAVIS-2016 masks (one object). Defaults to False.
        split (str): Name of the sequence list. Defaults to 'val.txt'.
        jpeg_quality (int): Defaults to 98.

    Returns:
        str: ``root``.
    """
    for name, (frames, masks) in videos.items():
        frame_dir = osp.join(root, 'JPEGImages', '480p', name)
        mask_dir = osp.join(root, 'Annotations', '480p', name)
        for t, (img, mask) in enumerate(zip(frames, masks)):
            write_image(
                osp.join(frame_dir, f'{t:05d}.jpg'), img,
                [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            path = osp.join(mask_dir, f'{t:05d}.png')
            if binary:
                write_image(path, (mask > 0).astype(np.uint8) * 255)
            else:
                save_palette_png(mask, path)
    write_text(osp.join(root, 'ImageSets', split),
               ''.join(f'{name}\n' for name in videos))
    return root
