import os.path as osp
from typing import List


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
