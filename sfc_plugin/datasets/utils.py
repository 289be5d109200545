import os
import os.path as osp
import sys
import tempfile
import threading
from typing import Callable, List, Optional, Tuple, TypeVar

import mmcv
import numpy as np
from PIL import Image

#: What reading an image with PIL raises for a file that is not one, or
#: one too large to decode (its decompression-bomb guard, 179 MP).
IMAGE_READ_ERRORS = (OSError, ValueError, Image.DecompressionBombError)

#: The start of libjpeg's warnings about damaged data (its JWRN_HIT_MARKER,
#: JWRN_HUFF_BAD_CODE, JWRN_EXTRANEOUS_DATA, JWRN_MUST_RESYNC, ... and
#: JWRN_JPEG_EOF): decoding goes on past them, filling the damaged blocks
#: with whatever the broken data says.
JPEG_DAMAGE_WARNINGS = ('Corrupt JPEG data', 'Premature end of JPEG file')

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


_Result = TypeVar('_Result')
_STDERR_LOCK = threading.Lock()
#: (pid, file) receiving stderr while a frame decodes; one per process, as
#: a forked worker must not share its offset with its parent.
_stderr_sink: Optional[Tuple[int, object]] = None


def call_capturing_stderr(fn: Callable[[], _Result]) -> Tuple[_Result, str]:
    """Calls ``fn`` with file descriptor 2 sent to a private file and
    returns its result and what was written there.

    libjpeg, inside OpenCV, tells of damaged data only by printing a
    warning on stderr. Calls are serialised; what other threads print
    meanwhile is captured too, so the caller writes on what is not its own
    (:func:`decode_frame`). Without a file descriptor 2 (a daemon), ``fn``
    runs as it is.
    """
    global _stderr_sink
    with _STDERR_LOCK:
        try:
            saved = os.dup(2)
        except OSError:
            return fn(), ''
        try:
            if _stderr_sink is None or _stderr_sink[0] != os.getpid():
                _stderr_sink = (os.getpid(), tempfile.TemporaryFile())
            sink = _stderr_sink[1].fileno()
            os.ftruncate(sink, 0)
            os.lseek(sink, 0, os.SEEK_SET)
            try:
                sys.stderr.flush()  # what was printed before is not fn's
            except (AttributeError, OSError, ValueError):
                pass
            os.dup2(sink, 2)
            returned = False
            try:
                result = fn()
                returned = True
            finally:
                os.dup2(saved, 2)
                os.lseek(sink, 0, os.SEEK_SET)
                chunks = []
                while chunk := os.read(sink, 1 << 16):
                    chunks.append(chunk)
                text = b''.join(chunks).decode(errors='replace')
                if not returned:
                    _write_stderr(text)
        finally:
            os.close(saved)
    return result, text


def _write_stderr(text: str) -> None:
    try:
        os.write(2, text.encode())
    except OSError:
        pass


def decode_frame(data: bytes, path: str, backend: str = 'cv2') -> np.ndarray:
    """A frame file's bytes as an (H, W, 3) uint8 BGR image, decoded as
    ``mmcv.LoadImageFromFile`` decodes them, or an OSError naming
    ``path``: empty, not an image, cut short or, for a JPEG decoded by
    OpenCV (``backend='cv2'``), damaged (a warning of
    :data:`JPEG_DAMAGE_WARNINGS` from libjpeg; Pillow keeps its warnings to
    itself)."""
    if not data:
        raise OSError(f'Cannot decode frame "{path}": the file is empty')
    cut = image_cut_short(data)
    if cut:
        raise OSError(f'Cannot decode frame "{path}": {cut}')
    damage = []
    try:
        if backend == 'cv2' and data.startswith(b'\xff\xd8'):
            img, printed = call_capturing_stderr(
                lambda: mmcv.imfrombytes(data, flag='color', backend=backend))
            others = []
            for line in printed.splitlines(keepends=True):
                (damage if line.startswith(JPEG_DAMAGE_WARNINGS) else
                 others).append(line)
            if others:
                _write_stderr(''.join(others))
        else:
            img = mmcv.imfrombytes(data, flag='color', backend=backend)
    except (OSError, ValueError) as err:
        raise OSError(f'Cannot decode frame "{path}": {err}') from err
    if damage:
        raise OSError(f'Cannot decode frame "{path}": its JPEG data is '
                      f'damaged (libjpeg: "{damage[0].strip()}")')
    if img is None:
        raise OSError(f'Cannot decode frame "{path}": not an image, or a '
                      'truncated file')
    return img
