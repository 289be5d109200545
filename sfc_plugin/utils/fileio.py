"""File output of sfc_plugin: the one home of every write and its checks.

Every tool writes through these functions, so that the rules hold
everywhere:

- A user's inputs are never written, moved or deleted:
  :func:`check_output_location` refuses an output that is, holds or lies
  inside any input before any work starts.
- Nothing that looks complete is left by a failed or interrupted write:
  single files go through :func:`atomic_output` (a temporary file beside
  the target, renamed into place only on success).
- Every write is verified: byte counts are checked against the file on
  disk (:func:`write_bytes`), and a video is reopened and its frames
  counted (:class:`VerifiedVideoWriter`), since OpenCV's encoder reports
  no error when a write fails (a full disk, a file-size limit).

Errors name the file. Paths may be ``str`` or any ``os.PathLike``.
"""
import contextlib
import hashlib
import io
import json
import os
import os.path as osp
import shutil
import tempfile
from typing import Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np

PathLike = Union[str, 'os.PathLike[str]']


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain ``open(path, 'w')`` would give a new file."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode ``os.makedirs`` would give a new folder."""
    return 0o777 & ~_umask()


def make_parent_dir(path: PathLike, what: str = 'Output') -> str:
    """Creates the folder that will hold ``path``; returns it.

    Raises:
        NotADirectoryError: A parent on the way is a file.
        PermissionError: The folder cannot be created or written.
    """
    parent = osp.dirname(osp.abspath(os.fspath(path)))
    try:
        os.makedirs(parent, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(
            f'{what} "{os.fspath(path)}": "{parent}" (or a folder above it) '
            'is a file, not a folder') from None
    except PermissionError:
        raise PermissionError(
            f'{what} "{os.fspath(path)}": cannot create the folder '
            f'"{parent}" (permission denied)') from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f'{what} "{os.fspath(path)}": the folder '
                              f'"{parent}" is not writable')
    return parent


def _check_not_empty(path: PathLike, what: str) -> None:
    if not os.fspath(path).strip():
        raise ValueError(f'{what} is empty: give a path')


def check_writable_dir(path: PathLike, what: str = 'Output folder') -> None:
    """Checks, before any work, that a folder can be created or written.

    Raises:
        ValueError: ``path`` is empty (an unset variable, most likely; not
            the current folder).
        NotADirectoryError: ``path`` (or a parent) is a file.
        PermissionError: It cannot be written.
    """
    _check_not_empty(path, what)
    path = osp.abspath(os.fspath(path))
    if osp.exists(path) and not osp.isdir(path):
        raise NotADirectoryError(f'{what} "{path}" is a file')
    existing = path
    while not osp.exists(existing):
        existing = osp.dirname(existing)
    if not osp.isdir(existing):
        raise NotADirectoryError(
            f'{what} "{path}": "{existing}" is a file, not a folder')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f'{what} "{path}": "{existing}" is not '
                              'writable')


def check_writable_file(path: PathLike, what: str = 'Output') -> None:
    """Checks, before any work, that a file can be written at ``path``: it
    is no folder, and its folder can be created or written.

    Args:
        path (str | PathLike): The file.
        what (str): How to call it in the message (a tool's option, e.g.
            '--out'); its folder is called ``what`` + ' folder'.

    Raises:
        ValueError: ``path`` is empty.
        IsADirectoryError: ``path`` is a folder.
        NotADirectoryError: A parent of it is a file.
        PermissionError: Its folder cannot be written.
    """
    _check_not_empty(path, what)
    if osp.isdir(os.fspath(path)):
        raise IsADirectoryError(f'{what} "{os.fspath(path)}" is a folder')
    check_writable_dir(osp.dirname(osp.abspath(os.fspath(path))),
                       f'{what} folder')


@contextlib.contextmanager
def atomic_output(path: PathLike, suffix: str = '.part') -> Iterator[str]:
    """A temporary path beside ``path``, moved to ``path`` only if the block
    succeeds, so that a failed or interrupted write never leaves a file
    that looks complete.

    The file gets the usual mode (not ``mkstemp``'s private 0o600).

    Raises:
        NotADirectoryError, PermissionError: See :func:`make_parent_dir`.
        IsADirectoryError: ``path`` is a folder.
    """
    path = os.fspath(path)
    if osp.isdir(path):
        raise IsADirectoryError(f'Output file "{path}" is a folder')
    out_dir = make_parent_dir(path)
    fd, tmp = tempfile.mkstemp(
        prefix='.' + osp.basename(path) + '.', suffix=suffix, dir=out_dir)
    os.close(fd)
    os.chmod(tmp, file_mode())
    try:
        yield tmp
        if not osp.isfile(tmp):
            raise OSError(f'Writing "{path}" failed: nothing was written')
        os.replace(tmp, path)
    finally:
        if osp.lexists(tmp):
            os.remove(tmp)


def replace_folder(staging: PathLike, target: PathLike) -> None:
    """Moves a finished staging folder to ``target``, replacing the folder
    there (the caller has checked that it may be replaced), by renames only:
    the old folder goes aside into ``.<name>.replaced-XXXX`` beside it, the
    staging folder takes its place, and then the old one is deleted. A run
    stopped part-way leaves the old folder or the new one whole, never a mix
    of the two.
    """
    target = os.fspath(target)
    aside = None
    if osp.lexists(target):
        aside = tempfile.mkdtemp(prefix=f'.{osp.basename(target)}.replaced-',
                                 dir=osp.dirname(osp.abspath(target)))
        os.rename(target, osp.join(aside, 'old'))
    os.rename(staging, target)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def remove_file(path: PathLike) -> None:
    """Removes an output file of an earlier run if there is one (never a
    folder: only what a tool writes, checked as an output beforehand).

    Raises:
        IsADirectoryError: ``path`` is a folder.
        OSError: It cannot be removed (naming it).
    """
    path = os.fspath(path)
    if osp.isdir(path) and not osp.islink(path):
        raise IsADirectoryError(f'Output file "{path}" is a folder')
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise OSError(f'Cannot remove the earlier output "{path}": '
                      f'{err.strerror or err}') from None


def write_all(f, data: bytes, path: str) -> None:
    """Writes ``data`` to the open binary file ``f`` and checks that it all
    reached the file.

    Raises:
        OSError: Fewer bytes were written (naming ``path``).
    """
    start = f.tell()
    written = f.write(data)
    f.flush()
    end = f.tell()
    if written != len(data) or end - start != len(data):
        raise OSError(f'Writing "{path}" failed: {end - start} of '
                      f'{len(data)} bytes written')


def write_bytes(path: PathLike, data: bytes, atomic: bool = True) -> None:
    """Writes a whole file and checks its size on disk.

    Args:
        path (str | PathLike): The file.
        data (bytes): Its content.
        atomic (bool): Through :func:`atomic_output`. Defaults to True;
            files inside a staging folder that is itself renamed into place
            need no second rename.

    Raises:
        OSError: The write failed or was cut short (a full disk, a file-size
            limit), naming the file.
    """
    path = os.fspath(path)

    def write(target: str) -> None:
        with open(target, 'wb') as f:
            write_all(f, data, path)
        size = os.stat(target).st_size
        if size != len(data):
            raise OSError(f'Writing "{path}" failed: the file holds {size} '
                          f'of {len(data)} bytes')

    if not atomic:
        write(path)
        return
    with atomic_output(path) as tmp:
        write(tmp)


def write_text(path: PathLike, text: str, atomic: bool = True) -> None:
    """:func:`write_bytes` of UTF-8 text."""
    write_bytes(path, text.encode('utf-8'), atomic=atomic)


def write_json(obj, path: PathLike, indent: int = 2,
               atomic: bool = True) -> None:
    """Writes ``obj`` as JSON (a final newline included), checked."""
    write_text(path, json.dumps(obj, indent=indent) + '\n', atomic=atomic)


def write_image(path: PathLike, image: np.ndarray, params=(),
                atomic: bool = True) -> None:
    """Encodes an image with OpenCV (format from the extension) and writes
    it, checked: ``cv2.imwrite`` would report a failed write only as
    ``False``.

    Raises:
        ValueError: OpenCV cannot encode the image in that format.
        OSError: The write failed (naming the file).
    """
    import cv2
    path = os.fspath(path)
    ok, data = cv2.imencode(osp.splitext(path)[1] or '.png', image,
                            list(params))
    if not ok:
        raise ValueError(f'Cannot encode "{path}": OpenCV refused the image '
                         f'({image.dtype}, shape {image.shape})')
    write_bytes(path, data.tobytes(), atomic=atomic)


def sha256(path: PathLike) -> str:
    """Hex SHA-256 of a file's content."""
    h = hashlib.sha256()
    with open(os.fspath(path), 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def davis_palette() -> List[int]:
    """DAVIS's colour palette (the PASCAL VOC one), as a flat RGB list."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


_PALETTE = davis_palette()


def encode_palette_png(mask: np.ndarray) -> bytes:
    """An (H, W) map of ids 0-255 as palette PNG bytes (DAVIS's format).

    Raises:
        ValueError: Ids outside 0-255, which a palette PNG cannot hold.
    """
    from PIL import Image
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f'A palette PNG holds an (H, W) id map, got shape '
                         f'{mask.shape}')
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError(
                f'A palette PNG holds ids 0-255, got ids {int(mask.min())} '
                f'to {int(mask.max())}')
        mask = mask.astype(np.uint8)
    img = Image.fromarray(mask, mode='P')
    img.putpalette(_PALETTE)
    buffer = io.BytesIO()
    img.save(buffer, format='PNG')
    return buffer.getvalue()


def save_palette_png(mask: np.ndarray, path: PathLike,
                     atomic: bool = True) -> None:
    """Writes an (H, W) id map as a palette PNG, checked (see
    :func:`write_bytes`)."""
    write_bytes(path, encode_palette_png(mask), atomic=atomic)


class VerifiedVideoWriter:
    """An OpenCV video file whose frames are all checked to be in it.

    ``cv2.VideoWriter.write`` returns nothing and fails silently (a full
    disk, a file-size limit, a broken encoder); so :meth:`close` reopens
    the file and checks that it decodes and holds every frame written, at
    the size written.

    Frames of an odd width or height get one black column or row at the
    right or bottom: 4:2:0 encoders (mp4v, H.264) crop an odd size, which
    lost a column and a row of the picture.

    Args:
        path (str | PathLike): The video file (e.g. ``overlay.mp4``).
        fps (float): Frame rate.
        fourcc (str): Codec. Defaults to 'mp4v'.
        name (str, optional): How messages call the file (where ``path``
            is a temporary place). Defaults to ``path``.

    Raises:
        OSError: (``write``) OpenCV cannot encode this codec here;
            (``close``) the file does not hold the frames written.
    """

    def __init__(self, path: PathLike, fps: float, fourcc: str = 'mp4v',
                 name: Optional[str] = None):
        self.path = os.fspath(path)
        self.name = name or self.path
        self.fps = float(fps)
        self.fourcc = fourcc
        self.frames = 0
        self.frame_size: Optional[Tuple[int, int]] = None
        #: (width, height) in the file: ``frame_size`` made even.
        self.encoded_size: Optional[Tuple[int, int]] = None
        self._writer = None

    def write(self, frame: np.ndarray) -> None:
        """Appends a (H, W, 3) uint8 BGR frame."""
        import cv2
        size = (frame.shape[1], frame.shape[0])
        if size[0] % 2 or size[1] % 2:
            frame = cv2.copyMakeBorder(frame, 0, size[1] % 2, 0, size[0] % 2,
                                       cv2.BORDER_CONSTANT, value=0)
        if self._writer is None:
            self.encoded_size = (frame.shape[1], frame.shape[0])
            self._writer = cv2.VideoWriter(
                self.path, cv2.VideoWriter_fourcc(*self.fourcc), self.fps,
                self.encoded_size)
            if not self._writer.isOpened():
                raise OSError(f'Cannot write video "{self.name}": OpenCV has '
                              f'no {self.fourcc} encoder here, or the file '
                              'cannot be created')
            self.frame_size = size
        elif size != self.frame_size:
            raise ValueError(f'Video "{self.name}": frame {self.frames} is '
                             f'{size[0]}×{size[1]}, the first is '
                             f'{self.frame_size[0]}×{self.frame_size[1]}')
        self._writer.write(frame)
        self.frames += 1

    def close(self, verify: bool = True) -> None:
        """Finishes the file and (``verify``) checks it.

        Raises:
            OSError: The file is missing, cannot be decoded, or holds
                another number of frames than were written.
        """
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        if verify:
            self.verify()

    def verify(self) -> None:
        """Reopens the file: every frame written must be there and its last
        frame must decode."""
        import cv2
        count, last_ok, size = 0, False, None
        if osp.isfile(self.path) and os.stat(self.path).st_size:
            capture = cv2.VideoCapture(self.path)
            try:
                if capture.isOpened():
                    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
                    if count == self.frames and count > 0:
                        capture.set(cv2.CAP_PROP_POS_FRAMES, count - 1)
                        last_ok, last = capture.read()
                        if last_ok:
                            size = (last.shape[1], last.shape[0])
            finally:
                capture.release()
        if last_ok and size != self.encoded_size:
            raise OSError(
                f'Writing video "{self.name}" failed: its frames are '
                f'{size[0]}×{size[1]}, {self.encoded_size[0]}×'
                f'{self.encoded_size[1]} were written (the encoder changed '
                'the size)')
        if count != self.frames or not last_ok:
            held = (f'{max(count, 0)} readable frames'
                    if count > 0 else 'no readable video')
            raise OSError(
                f'Writing video "{self.name}" failed: it holds {held}, '
                f'{self.frames} were written (disk full, a file-size limit, '
                'or a broken encoder?)')


def _real(path: PathLike) -> str:
    return osp.realpath(osp.abspath(os.fspath(path)))


def _inside(real_path: str, real_folder: str) -> bool:
    return real_path == real_folder or real_path.startswith(
        real_folder.rstrip(os.sep) + os.sep)


def is_within(path: PathLike, folder: PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (links resolved)."""
    return _inside(_real(path), _real(folder))


def _link_into(folder: str, real_out: str) -> Optional[str]:
    """A link directly inside ``folder`` (a frames or anchors folder)
    whose target is ``real_out`` (resolved) or lies inside it."""
    try:
        entries = os.scandir(folder)
    except OSError:  # not a folder, or unreadable: nothing to follow
        return None
    with entries:
        for entry in entries:
            if entry.is_symlink() and _inside(_real(entry.path), real_out):
                return entry.path
    return None


def check_output_location(output: PathLike,
                          inputs: Mapping[str, Optional[PathLike]],
                          what: str = 'Output folder') -> None:
    """Refuses an output that would write over, move or delete an input.

    An output that is an input, lies inside an input folder, or holds an
    input (a results folder that would be replaced with the frames inside
    it), or what a link in an input folder points to (a frame linked to a
    previous result), is refused, before any work.

    Args:
        output (str | PathLike): The output file or folder.
        inputs (Mapping): What each input is (for the message) → its path;
            None entries are skipped.
        what (str): How to call the output in the message.

    Raises:
        ValueError: Naming the output, the input and how they overlap.
    """
    out = _real(output)
    for name, path in inputs.items():
        if path is None:
            continue
        src = _real(path)
        if src == out:
            relation = 'is'
        elif _inside(src, out):
            relation = 'holds'
        elif _inside(out, src):
            relation = 'lies inside'
        else:
            link = _link_into(src, out)
            if link is None:
                continue
            raise ValueError(
                f'{what} "{os.fspath(output)}" holds what "{link}" of the '
                f'{name} "{os.fspath(path)}" links to: inputs are never '
                'written, moved or deleted; choose another output')
        raise ValueError(
            f'{what} "{os.fspath(output)}" {relation} the {name} '
            f'"{os.fspath(path)}": inputs are never written, moved or '
            'deleted; choose another output')


__all__ = [
    'atomic_output', 'check_output_location', 'check_writable_dir',
    'check_writable_file',
    'davis_palette', 'dir_mode', 'encode_palette_png', 'file_mode',
    'is_within', 'make_parent_dir', 'remove_file', 'replace_folder',
    'save_palette_png', 'sha256',
    'VerifiedVideoWriter', 'write_all', 'write_bytes', 'write_image',
    'write_json', 'write_text'
]
