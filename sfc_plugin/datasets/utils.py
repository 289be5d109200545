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


def _first_jpeg_scan(data: bytes) -> Optional[int]:
    """Offset of the first SOS marker of a JPEG's own image, found by
    stepping over its marker segments (an EXIF thumbnail in APP1 holds a
    scan of its own); None if the headers end first. Headers that are not a
    JPEG's give the offset where they break, for the decoder to judge."""
    pos = 2
    while pos + 2 <= len(data):
        if data[pos] != 0xFF:
            return pos
        marker = data[pos + 1]
        if marker == 0xDA:
            return pos
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            pos += 2
        else:
            if pos + 4 > len(data):
                return None
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], 'big')
    return None


def image_cut_short(data: bytes) -> Optional[str]:
    """Why the bytes of a JPEG or PNG file are cut short, or None.

    OpenCV decodes a cut JPEG or PNG without an error, filling the missing
    rows with grey: a frame that must not be taken for the real one. A
    JPEG's scans end with the EOI marker (entropy-coded data cannot hold
    it; data some cameras append after it is allowed), a PNG with its IEND
    chunk. Other formats are not checked.
    """
    if data.startswith(b'\xff\xd8'):
        # From the first scan on, only the end marker is FF D9 (the
        # entropy-coded data stuffs every FF); data after it (a motion
        # photo's video) may hold any bytes.
        first_scan = _first_jpeg_scan(data)
        if first_scan is None:
            return 'a JPEG file without image data (cut short in its headers)'
        if data.find(b'\xff\xd9', first_scan) < 0:
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
