import os.path as osp
from typing import List, Optional

import mmcv
import numpy as np
from PIL import Image

#: What reading an image with PIL raises for a file that is not one, or
#: one too large to decode (its decompression-bomb guard, 179 MP).
IMAGE_READ_ERRORS = (OSError, ValueError, Image.DecompressionBombError)

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')


def is_image_file(name: str) -> bool:
    """Whether a file name has one of :data:`IMG_EXTENSIONS` (any case)."""
    return name.lower().endswith(IMG_EXTENSIONS)


def read_list_file(path: str, owner: str, what: str = 'list') -> List[str]:
    """Non-empty, stripped lines of a list file (video lists, splits).

    Raises FileNotFoundError or ValueError naming ``owner`` and the file.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'{owner}: {what} (ann_file) not found: '
                                f'"{path}"')
    try:
        with open(path, encoding='utf-8') as f:
            lines = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError:
        raise ValueError(f'{owner}: {what} "{path}" is not a text file (one '
                         'name per line)') from None
    if not lines:
        raise ValueError(f'{owner}: {what} "{path}" is empty')
    return lines


def image_cut_short(data: bytes) -> Optional[str]:
    """Why the bytes of a JPEG or PNG file are cut short, or None.

    OpenCV decodes a cut JPEG or PNG without an error, filling the missing
    rows with grey: a frame that must not be taken for the real one. A
    JPEG's last scan ends with the EOI marker (entropy-coded data cannot
    hold it; data some cameras append after it is allowed), a PNG with its
    IEND chunk. Other formats are not checked.
    """
    if data.startswith(b'\xff\xd8'):
        last_scan = data.rfind(b'\xff\xda')
        if last_scan < 0 or data.find(b'\xff\xd9', last_scan) < 0:
            return 'a JPEG file without its end marker (cut short)'
    elif data.startswith(b'\x89PNG\r\n\x1a\n'):
        if data.rfind(b'IEND\xaeB`\x82') < 0:
            return 'a PNG file without its IEND chunk (cut short)'
    return None


def decode_frame(data: bytes, path: str, backend: str = 'cv2') -> np.ndarray:
    """A frame file's bytes as an (H, W, 3) uint8 BGR image, decoded as
    ``mmcv.LoadImageFromFile`` decodes them, or an OSError naming
    ``path``: empty, not an image, or cut short."""
    if not data:
        raise OSError(f'Cannot decode frame "{path}": the file is empty')
    cut = image_cut_short(data)
    if cut:
        raise OSError(f'Cannot decode frame "{path}": {cut}')
    try:
        img = mmcv.imfrombytes(data, flag='color', backend=backend)
    except (OSError, ValueError) as err:
        raise OSError(f'Cannot decode frame "{path}": {err}') from err
    if img is None:
        raise OSError(f'Cannot decode frame "{path}": not an image, or a '
                      'truncated file')
    return img
