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

from .utils import IMAGE_READ_ERRORS, is_image_file

# FFmpeg logs every damaged macroblock of a corrupt video (thousands of
# lines); the reader reports a video that cannot be decoded to its end
# itself, naming the frame. Read when OpenCV first opens a video; a user's
# own setting wins.
os.environ.setdefault('OPENCV_FFMPEG_LOGLEVEL', '-8')

_TRAILING_NUMBER = re.compile(r'(\d+)$')
#: The EXIF tag of how an image is to be turned; 5-8 swap its sides.
_EXIF_ORIENTATION = 0x0112


def _frame_number(name: str) -> Optional[int]:
    match = _TRAILING_NUMBER.search(osp.splitext(name)[0])
    return int(match.group(1)) if match else None


class FrameFolderReader:
    """The images of a folder, in frame order, as one video.

    Names ending in a number (``00000.jpg``, ``frame_12.png``) are ordered by
    that number and must be consecutive; where no name has a number, names
    are ordered as strings. Every frame must have the size of the first.

    Args:
        path (str | PathLike): The folder.

    Raises:
        FileNotFoundError: ``path`` is not a folder.
        ValueError: No image in it, a gap in the numbering, two files with
            one number or one name (``a.jpg``, ``a.png``), numbered frames
            beside one without a number, a frame that is not a regular file
            (a FIFO), or frames of different sizes; the message names the
            files.
        OSError: An image whose header cannot be read.
    """

    #: A folder is read whole or not at all (a frame that cannot be decoded
    #: is an error naming it).
    truncated_at: Optional[int] = None
    #: Its frames are counted exactly: its end is always known.
    unverified_end: Optional[str] = None
    estimated_frame_count: Optional[int] = None

    def __init__(self, path: str):
        path = os.fspath(path)
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
        for name in names:
            if not osp.isfile(osp.join(self.path, name)):
                # A FIFO or a device would block the reader for good.
                raise ValueError(f'Frame "{osp.join(self.path, name)}" is '
                                 'not a regular file')
        stems = {}
        for name in sorted(names):
            stem = osp.splitext(name)[0]
            if stem in stems:
                raise ValueError(
                    f'Frame folder "{self.path}": "{stems[stem]}" and '
                    f'"{name}" are one frame\'s two files (their results '
                    f'would both be "{stem}.png")')
            stems[stem] = name
        numbers = [_frame_number(n) for n in names]
        if None in numbers:
            numbered = [n for n, i in zip(names, numbers) if i is not None]
            if numbered:
                # Ordered as strings, frame10 would come before frame2.
                stray = sorted(n for n, i in zip(names, numbers) if i is None)
                raise ValueError(
                    f'Frame folder "{self.path}" mixes numbered frames '
                    f'("{sorted(numbered)[0]}") with "{stray[0]}", which has '
                    'no frame number: the frame order is unclear (move it '
                    'out, or name it after its frame)')
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
                    # OpenCV, which decodes the frames, turns them as their
                    # EXIF orientation says; PIL's size is before turning.
                    if img.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7,
                                                                   8):
                        this = this[::-1]
            except IMAGE_READ_ERRORS as err:
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

    Frames are named ``00000``, ``00001``, ... (DAVIS's naming), in
    decoding order. A video that stops decoding before the container's
    frame count (a corrupt or cut file) is an error saying how many frames
    decode, unless ``allow_truncated``: then iteration ends there and
    :attr:`truncated_at` says where. Which frames are missing is not known
    (frames lost mid-video, when a damaged chunk merges two, renumber the
    rest, timestamps included), so the names are the video's own only if
    the missing frames are its last.

    Some containers state no count (raw MJPEG, APNG) or only an estimate
    from the file's size (MPEG program and transport streams, elementary
    streams), which a cut file shrinks with it, or which decoding may pass:
    a cut file then cannot be told from a whole one. Once such a video has
    been read to the end of decoding, :attr:`unverified_end` says why its
    end is not known to be the video's (and a passed estimate no longer
    counts as :attr:`num_frames`: it was wrong).

    Args:
        path (str | PathLike): The video file.
        allow_truncated (bool): Accept a video that cannot be decoded to
            its end. Defaults to False.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        OSError: OpenCV cannot open it or decode its first frame;
            (while reading) a frame that cannot be decoded before the
            stated end (:class:`TruncatedVideoError`).
        ValueError: (while reading) a frame whose size differs from the
            first's.
    """

    def __init__(self, path: str, allow_truncated: bool = False):
        path = os.fspath(path)
        self.allow_truncated = bool(allow_truncated)
        #: How many frames decoded, when an accepted truncated video ended
        #: early (the index of the first missing frame if they are its
        #: last); else None.
        self.truncated_at: Optional[int] = None
        #: Why the last frame decoded may not be the video's last (set when
        #: iteration ends without a frame count to check it against).
        self.unverified_end: Optional[str] = None
        #: The container's frame count when it is only an estimate: from
        #: the file size (MPEG streams), or passed by decoding.
        self.estimated_frame_count: Optional[int] = None
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
        if self.num_frames and _count_from_file_size(path):
            # Cut short, such a file states a shorter length, matching what
            # decodes: its count cannot reveal the cut.
            self.estimated_frame_count = self.num_frames
            self.num_frames = None

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
                    if self.num_frames and i < self.num_frames:
                        if not self.allow_truncated:
                            raise TruncatedVideoError(self.path, i,
                                                      self.num_frames)
                        self.truncated_at = i
                    elif self.num_frames is None:
                        stated = (
                            f'states {self.estimated_frame_count} frames only '
                            'as an estimate' if self.estimated_frame_count else
                            'states no frame count')
                        self.unverified_end = (
                            f'the video file {stated}: whether decoding '
                            f'ended at its end after {i} frames or where it '
                            'is cut short cannot be checked')
                    return
                if self.num_frames is not None and i == self.num_frames:
                    # Decoded past the container's count: it was estimated.
                    self.estimated_frame_count = self.num_frames
                    self.num_frames = None
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


def _count_from_file_size(path: str) -> bool:
    """Whether FFmpeg, lacking a stated frame count for this container,
    estimates it from the file's size and bit rate: MPEG program and
    transport streams and elementary streams (named by their first bytes;
    MP4, AVI and Matroska state their length in a header)."""
    try:
        with open(path, 'rb') as f:
            head = f.read(189)
    except OSError:
        return False
    transport = len(head) == 189 and head[0] == head[188] == 0x47
    return transport or head.startswith((b'\x00\x00\x01', b'\x00\x00\x00\x01'))


class TruncatedVideoError(OSError):
    """A video file that cannot be decoded to the end its container
    states: ``frame`` of its ``num_frames`` frames decode."""

    def __init__(self, path: str, frame: int, num_frames: int):
        # Which frames are missing is not known: a damaged chunk header
        # merges two frames' data into one packet, and the demuxer then
        # numbers the frames after it one early (their timestamps too).
        super().__init__(
            f'Video "{path}" cannot be decoded to its end: {frame} of its '
            f'{num_frames} frames decode (the file is corrupt or cut short; '
            'which frames are missing cannot be told). To track the frames '
            'that decode, accept a truncated source (tools/track.py '
            '--accept-truncated, or allow_truncated=True): they are numbered '
            "in decoding order, the video's own only if the missing frames "
            'are its last')
        self.path, self.frame, self.num_frames = path, frame, num_frames


VideoReader = Union[FrameFolderReader, VideoFileReader]


def open_video(source: str, allow_truncated: bool = False) -> VideoReader:
    """A frame folder or a video file, whichever ``source`` is.

    Args:
        source (str | PathLike): Frame folder or video file.
        allow_truncated (bool): For video files: see
            :class:`VideoFileReader`. Defaults to False.
    """
    source = os.fspath(source)
    if osp.isdir(source):
        return FrameFolderReader(source)
    if osp.isfile(source):
        return VideoFileReader(source, allow_truncated)
    raise FileNotFoundError(
        f'Video source not found: "{source}" (give a frame folder or a '
        'video file)')
