import os.path as osp
from typing import List

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
    with open(path) as f:
        lines = [line.strip() for line in f if line.strip()]
    if not lines:
        raise ValueError(f'{owner}: {what} "{path}" is empty')
    return lines
