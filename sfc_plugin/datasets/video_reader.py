"""Frame sources of a tracking run: a folder of frames or a video file.

Both are checked when opened, before any work is done on them, and both
yield the same per-frame items, which :class:`LoadVideoFrame` turns into
images: ``frame_id``, ``frame_name`` (the name of the frame's output files)
and ``img_path``, plus the decoded ``img`` for video files.
"""
import os
import os.path as osp
import re
from typing import Iterator, List, Optional, Tuple, Union

import cv2
from PIL import Image

from .utils import is_image_file

_TRAILING_NUMBER = re.compile(r'(\d+)$')


def _frame_number(name: str) -> Optional[int]:
    match = _TRAILING_NUMBER.search(osp.splitext(name)[0])
    return int(match.group(1)) if match else None


class FrameFolderReader:
    """The images of a folder, in frame order, as one video.

    Names ending in a number (``00000.jpg``, ``frame_12.png``) are ordered by
    that number and must be consecutive; otherwise names are ordered as
    strings. Every frame must have the size of the first.

    Args:
        path (str): The folder.

    Raises:
        FileNotFoundError: ``path`` is not a folder.
        ValueError: No image in it, a gap in the numbering, two files with
            one number, or frames of different sizes; the message names the
            files.
        OSError: An image whose header cannot be read.
    """

    def __init__(self, path: str):
        if not osp.isdir(path):
            raise FileNotFoundError(f'Frame folder not found: "{path}"')
        self.path = path
        self.name = osp.basename(osp.normpath(path))
        names = [n for n in os.listdir(path) if is_image_file(n)]
        if not names:
            raise ValueError(f'Frame folder "{path}" holds no image '
                             '(.jpg, .png, ...)')
        self.frame_names = self._ordered(names)
        self.frame_size = self._common_size()

    @property
    def num_frames(self) -> int:
        return len(self.frame_names)

    def _ordered(self, names: List[str]) -> List[str]:
        numbers = [_frame_number(n) for n in names]
        if None in numbers:
            return sorted(names)
        order = sorted(zip(numbers, names))
        for (a, name_a), (b, name_b) in zip(order, order[1:]):
            if a == b:
                raise ValueError(
                    f'Frame folder "{self.path}": "{name_a}" and "{name_b}" '
                    f'both claim frame number {a}')
            if b != a + 1:
                missing = (f'frame {a + 1}' if b == a + 2 else
                           f'frames {a + 1} to {b - 1}')
                raise ValueError(
                    f'Frame folder "{self.path}" has a gap: "{name_a}" is '
                    f'followed by "{name_b}" ({missing} missing)')
        return [name for _, name in order]

    def _common_size(self) -> Tuple[int, int]:
        size, first = None, None
        for name in self.frame_names:
            path = osp.join(self.path, name)
            try:
                with Image.open(path) as img:
                    this = (img.height, img.width)
            except (OSError, ValueError) as err:
                raise OSError(f'Cannot read frame "{path}": {err}') from err
            if size is None:
                size, first = this, name
            elif this != size:
                raise ValueError(
                    f'Frame folder "{self.path}" mixes frame sizes: '
                    f'"{first}" is {size[1]}×{size[0]}, "{name}" is '
                    f'{this[1]}×{this[0]}')
        return size

    def __iter__(self) -> Iterator[dict]:
        for i, name in enumerate(self.frame_names):
            yield dict(
                frame_id=i,
                frame_name=osp.splitext(name)[0],
                img_path=osp.join(self.path, name))


class VideoFileReader:
    """The frames of a video file, decoded by OpenCV as they are read.

    Frames are named ``00000``, ``00001``, ... (DAVIS's naming). The frame
    count is the container's, which some formats only estimate; it serves
    progress display only.

    Args:
        path (str): The video file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        OSError: OpenCV cannot open it or decode its first frame.
        ValueError: (while reading) a frame whose size differs from the
            first's.
    """

    def __init__(self, path: str):
        if not osp.isfile(path):
            raise FileNotFoundError(f'Video file not found: "{path}"')
        self.path = path
        self.name = osp.splitext(osp.basename(path))[0]
        capture = self._open()
        try:
            ok, frame = capture.read()
            if not ok or frame is None:
                raise OSError(f'Cannot read video "{path}": no frame could '
                              'be decoded from it')
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            self.fps = capture.get(cv2.CAP_PROP_FPS) or None
        finally:
            capture.release()
        self.frame_size = tuple(frame.shape[:2])
        self.num_frames = count if count > 0 else None

    def _open(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(self.path)
        if not capture.isOpened():
            capture.release()
            raise OSError(
                f'Cannot read video "{self.path}": OpenCV cannot open it '
                '(not a video, or a codec this OpenCV build lacks)')
        return capture

    def __iter__(self) -> Iterator[dict]:
        capture = self._open()
        try:
            i = 0
            while True:
                ok, frame = capture.read()
                if not ok or frame is None:
                    return
                if frame.shape[:2] != self.frame_size:
                    raise ValueError(
                        f'Video "{self.path}": frame {i} is '
                        f'{frame.shape[1]}×{frame.shape[0]}, the first is '
                        f'{self.frame_size[1]}×{self.frame_size[0]}')
                yield dict(
                    frame_id=i,
                    frame_name=f'{i:05d}',
                    img_path=f'{self.path}#{i}',
                    img=frame)
                i += 1
        finally:
            capture.release()


VideoReader = Union[FrameFolderReader, VideoFileReader]


def open_video(source: str) -> VideoReader:
    """A frame folder or a video file, whichever ``source`` is."""
    if osp.isdir(source):
        return FrameFolderReader(source)
    if osp.isfile(source):
        return VideoFileReader(source)
    raise FileNotFoundError(
        f'Video source not found: "{source}" (give a frame folder or a '
        'video file)')
