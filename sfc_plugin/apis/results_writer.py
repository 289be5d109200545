"""Writing a tracking run's results so that only a complete run looks done.

Everything is written into a hidden staging folder beside the output folder
(``.<name>.partial-XXXX``) and moved into place by one rename after the
summary, the last file, is written. An interrupted or failed run removes
its staging folder; one killed outright (SIGKILL, a power cut) leaves it,
and the next run into the same output folder removes it, saying so.

Every file is checked as written (:mod:`sfc_plugin.utils.fileio`): label
PNGs and ``keypoints.jsonl`` by their byte counts, ``overlay.mp4`` by
reopening it and counting its frames.
"""
import json
import os
import os.path as osp
import queue
import shutil
import socket
import sys
import tempfile
import threading
from typing import Callable, Mapping, Optional

import numpy as np

from sfc_plugin.utils.fileio import (
    VerifiedVideoWriter,
    check_output_location,
    dir_mode,
    make_parent_dir,
    replace_folder,
    save_palette_png,
    write_all,
    write_json,
)
from sfc_plugin.utils.threads import lower_thread_priority
from sfc_plugin.visualization import (
    draw_keypoints,
    draw_mask_overlay,
    mark_anchor_frame,
)

SUMMARY_FILE = 'summary.json'
KEYPOINTS_FILE = 'keypoints.jsonl'
OVERLAY_FILE = 'overlay.mp4'
#: ``summary.json``'s ``producer``: what marks a folder as a result that
#: ``overwrite`` may replace.
PRODUCER = 'sfc_plugin.apis.track_video'
_OWNER_FILE = '.owner'

_DONE = object()


class _BackgroundSink:
    """Calls ``write(*item)`` for each queued item in a thread of its own.

    The queue is bounded, so at most ``queue_size`` items wait. The first
    error is kept (and the rest of the queue drained, so that ``put`` never
    blocks for good); the owner reports it.
    """

    def __init__(self, write: Callable, queue_size: int):
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.error: Optional[BaseException] = None
        self.done = 0
        self._thread = threading.Thread(
            target=self._work, name=f'results-{write.__name__}', daemon=True)
        self._thread.start()

    def put(self, item: tuple) -> None:
        self._queue.put(item)

    def _work(self) -> None:
        lower_thread_priority()
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self.error is not None:
                continue
            try:
                self._write(*item)
                self.done += 1
            except BaseException as err:  # reported by the owner's thread
                self.error = err

    def close(self) -> None:
        """Waits until everything queued has been written."""
        self._queue.put(_DONE)
        self._thread.join()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def previous_result_problem(folder: str) -> Optional[str]:
    """Why ``folder`` is not a previous result of this writer that
    ``overwrite`` may replace (None when it is one, or empty): it must hold
    a summary of this writer and nothing but the files that summary lists
    (a PNG a user put there is not a result)."""
    entries = sorted(os.listdir(folder))
    if not entries:
        return None
    try:
        with open(osp.join(folder, SUMMARY_FILE)) as f:
            summary = json.load(f)
        producer, listed = summary.get('producer'), summary.get('files')
    except (OSError, ValueError, AttributeError):
        producer = listed = None
    if producer != PRODUCER:
        return (f'it holds no {SUMMARY_FILE} of a tracking result (e.g. '
                f'"{entries[0]}")')
    if not isinstance(listed, list):
        return (f'its {SUMMARY_FILE} lists no files (a result of an older '
                'sfc_plugin): remove it yourself')
    listed = {name for name in listed if isinstance(name, str)}
    foreign = [
        e for e in entries
        if e not in listed or not osp.isfile(osp.join(folder, e))
        or osp.islink(osp.join(folder, e))
    ]
    if foreign:
        return (f'besides a tracking result it holds "{foreign[0]}"' +
                (f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''))
    return None


def clear_abandoned_staging(out_dir: str,
                            inputs: Mapping[str, Optional[str]]) -> None:
    """Removes the staging folders of runs into ``out_dir`` that were
    killed outright (their owner process is gone), saying so on stderr;
    those of live runs, and any that overlap ``inputs``, are left alone."""
    parent, name = osp.split(out_dir)
    if not osp.isdir(parent):
        return
    host = socket.gethostname()
    for entry in sorted(os.listdir(parent)):
        if not entry.startswith((f'.{name}.partial-', f'.{name}.replaced-')):
            continue
        path = osp.join(parent, entry)
        try:
            with open(osp.join(path, _OWNER_FILE)) as f:
                owner_host, pid = f.read().split()
            alive = owner_host != host or _pid_alive(int(pid))
        except (OSError, ValueError):
            # No owner file: not a staging folder of this writer (which
            # writes it first), but a user's folder of a similar name.
            continue
        try:
            check_output_location(path, inputs)
        except ValueError:
            alive = True
        if alive:
            print(f'sfc_plugin: note: "{path}" belongs to a run still in '
                  'progress', file=sys.stderr)
            continue
        shutil.rmtree(path, ignore_errors=True)
        print(f'sfc_plugin: removed "{path}", left by a run into "{out_dir}" '
              'that was killed before it finished', file=sys.stderr)


class TrackingResultsWriter:
    """Writes predicted frames in the background, committed as a whole.

    Per frame: a palette PNG of ids (masks and part maps; DAVIS's results
    format, ``<out_dir>/<frame>.png``) or a line of ``keypoints.jsonl``
    (``{"frame": name, "keypoints": [[x, y], ...]}``), and a frame of
    ``overlay.mp4`` (labels drawn over the frame). Labels and overlay are
    encoded by two threads, each fed through a bounded queue, overlapping
    the tracker's work without holding more than ``queue_size`` frames
    each.

    Use as a context manager; :meth:`commit` writes ``summary.json`` and
    moves the results into place, and leaving the context without it (an
    error, Ctrl-C) deletes them::

        with TrackingResultsWriter('results/blackswan', 'mask') as writer:
            for name, image, pred in frames:
                writer.write(name, image, pred)
            writer.commit(summary)

    Args:
        out_dir (str | PathLike): Output folder; created on commit.
        kind (str): 'mask', 'parts' or 'keypoints'.
        overlay (bool): Write ``overlay.mp4``. Defaults to True.
        fps (float): Frame rate of the overlay video. Defaults to 24.
        overwrite (bool): Replace an ``out_dir`` that holds a previous
            result of this writer (on commit only; a folder holding anything
            else is never replaced). Defaults to False.
        queue_size (int): Frames waiting to be written at most.
            Defaults to 8.
        inputs (Mapping[str, str], optional): The run's input files and
            folders by what they are ('frame folder', 'checkpoint', ...):
            an ``out_dir`` that is, holds or lies inside one is refused.

    Raises:
        FileExistsError: ``out_dir`` is a file, or a folder holding files
            and ``overwrite`` is off, or holding other files than a
            previous result.
        ValueError: ``out_dir`` overlaps an input.
    """

    def __init__(self,
                 out_dir: str,
                 kind: str,
                 overlay: bool = True,
                 fps: float = 24.0,
                 overwrite: bool = False,
                 queue_size: int = 8,
                 inputs: Optional[Mapping[str, Optional[str]]] = None):
        if kind not in ('mask', 'parts', 'keypoints'):
            raise ValueError('TrackingResultsWriter: kind must be mask, parts '
                             f'or keypoints, got {kind!r}')
        out_dir = os.fspath(out_dir)
        self.out_dir = osp.abspath(out_dir)
        check_output_location(out_dir, inputs or {})
        self.overwrite = overwrite
        self._check_replaceable(out_dir)
        self.kind = kind
        self.overlay = overlay
        self.fps = float(fps) if fps and 0 < fps < 1000 else 24.0
        parent = make_parent_dir(self.out_dir, 'Output folder')
        clear_abandoned_staging(self.out_dir, inputs or {})
        self.staging = tempfile.mkdtemp(
            prefix=f'.{osp.basename(self.out_dir)}.partial-', dir=parent)
        # mkdtemp makes it private (0o700); results get the usual mode.
        os.chmod(self.staging, dir_mode())
        with open(osp.join(self.staging, _OWNER_FILE), 'w') as f:
            f.write(f'{socket.gethostname()} {os.getpid()}\n')
        self._video = (VerifiedVideoWriter(
            osp.join(self.staging, OVERLAY_FILE), self.fps,
            name=osp.join(out_dir, OVERLAY_FILE)) if overlay else None)
        self._keypoints = (open(osp.join(self.staging, KEYPOINTS_FILE), 'wb')
                           if kind == 'keypoints' else None)
        self._keypoint_bytes = 0
        self._closed = False
        # Labels and overlay are encoded by a thread each: both encoders
        # release the GIL, so the two run in parallel.
        self._sinks = [_BackgroundSink(self._write_labels, queue_size)]
        if overlay:
            self._sinks.append(
                _BackgroundSink(self._write_overlay, queue_size))

    def _check_replaceable(self, shown: str) -> None:
        """Refuses an output folder that this run may not replace; run when
        the writer is made and again just before the commit, since another
        program may have written there meanwhile."""
        if not osp.lexists(self.out_dir):
            return
        if not osp.isdir(self.out_dir) or osp.islink(self.out_dir):
            raise FileExistsError(
                f'Output folder "{shown}" exists and is not a folder')
        held = sorted(os.listdir(self.out_dir))
        if not held:
            return
        if not self.overwrite:
            raise FileExistsError(
                f'Output folder "{shown}" already holds files '
                f'({len(held)} entries, e.g. "{held[0]}"); choose '
                'another output folder, or replace a previous result '
                '(tools/track.py --overwrite)')
        problem = previous_result_problem(self.out_dir)
        if problem:
            raise FileExistsError(
                f'Output folder "{shown}" is not a previous tracking '
                f'result: {problem}. Overwriting replaces only a '
                'previous result; choose another output folder')

    @property
    def frames_written(self) -> int:
        """Frames whose labels have been written."""
        return self._sinks[0].done

    def write(self, name: str, image: np.ndarray, pred: np.ndarray,
              anchor: bool = False) -> None:
        """Queues one frame's prediction.

        Args:
            name (str): Frame name (the PNG's name without extension).
            image (np.ndarray): (H, W, 3) uint8 BGR frame, for the overlay.
            pred (np.ndarray): (H, W) ids, or (J, 2) keypoints (x, y).
            anchor (bool): The labels were given, not predicted (marked in
                the overlay). Defaults to False.
        """
        self._raise_if_failed()
        for sink in self._sinks:
            sink.put((name, image, pred, anchor))

    def _raise_if_failed(self) -> None:
        for sink in self._sinks:
            if sink.error is not None:
                raise OSError(f'Writing results to "{self.out_dir}" failed: '
                              f'{sink.error}') from sink.error

    def _write_labels(self, name: str, image: np.ndarray, pred: np.ndarray,
                      anchor: bool) -> None:
        if self.kind == 'keypoints':
            line = json.dumps(dict(
                frame=name, keypoints=np.round(pred, 3).tolist())) + '\n'
            data = line.encode()
            write_all(self._keypoints, data,
                      osp.join(self.out_dir, KEYPOINTS_FILE))
            self._keypoint_bytes += len(data)
        else:
            # The staging folder is renamed as a whole: no rename per file.
            save_palette_png(pred, osp.join(self.staging, name + '.png'),
                             atomic=False)

    def _write_overlay(self, name: str, image: np.ndarray, pred: np.ndarray,
                       anchor: bool) -> None:
        drawn = (draw_keypoints(image, pred) if self.kind == 'keypoints'
                 else draw_mask_overlay(image, pred))
        if anchor:
            drawn = mark_anchor_frame(drawn)
        try:
            self._video.write(drawn)
        except OSError as err:
            raise OSError(f'{err}; run without the overlay (tools/track.py '
                          '--no-overlay)') from err

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sink in self._sinks:
            sink.close()
        if self._keypoints is not None:
            try:
                self._keypoints.close()
            except OSError as err:
                raise OSError(
                    f'Writing "{osp.join(self.out_dir, KEYPOINTS_FILE)}" '
                    f'failed: {err.strerror or err}') from err

    def commit(self, summary: dict) -> str:
        """Finishes writing, checks every file, adds ``summary.json`` (with
        ``producer`` set in ``summary``) and moves the folder into place.

        Raises:
            OSError: A file could not be written completely; nothing is
                moved into place.

        Returns:
            str: The output folder.
        """
        self._close()
        self._raise_if_failed()
        if self._video is not None:
            self._video.close()
        if self._keypoints is not None:
            size = os.stat(osp.join(self.staging, KEYPOINTS_FILE)).st_size
            if size != self._keypoint_bytes:
                raise OSError(f'Writing "{KEYPOINTS_FILE}" in '
                              f'"{self.out_dir}" failed: {size} of '
                              f'{self._keypoint_bytes} bytes on disk')
        os.remove(osp.join(self.staging, _OWNER_FILE))
        # The caller's dict gets the marker and the file list too: it is
        # what was written. The list is what a later --overwrite may
        # remove, and nothing else.
        summary['producer'] = PRODUCER
        summary['files'] = sorted(os.listdir(self.staging) + [SUMMARY_FILE])
        write_json(summary, osp.join(self.staging, SUMMARY_FILE),
                   atomic=False)
        # Something may have been written to the output folder while the
        # run went on: what is replaced is checked now, not at the start.
        self._check_replaceable(self.out_dir)
        replace_folder(self.staging, self.out_dir)
        self.staging = None
        return self.out_dir

    def abort(self) -> None:
        """Stops writing and deletes everything written so far (also when
        closing a file fails, e.g. on a full disk: that error is raised
        after the staging folder is gone)."""
        try:
            self._close()
        finally:
            try:
                if self._video is not None:
                    self._video.close(verify=False)
            finally:
                if self.staging is not None:
                    shutil.rmtree(self.staging, ignore_errors=True)
                    self.staging = None

    def __enter__(self) -> 'TrackingResultsWriter':
        return self

    def __exit__(self, *exc_info) -> None:
        if self.staging is not None:
            self.abort()
