"""Writing a tracking run's results so that only a complete run looks done.

Everything is written into a hidden staging folder beside the output folder
(``.<name>.partial-XXXX``) and moved into place by one rename after the
summary, the last file, is written. An interrupted or failed run removes
its staging folder; a killed one leaves it, under a name that says so.
"""
import json
import os
import os.path as osp
import queue
import shutil
import tempfile
import threading
from typing import Callable, Optional

import cv2
import numpy as np

from sfc_plugin.evaluation.metrics import save_palette_png
from sfc_plugin.visualization import draw_keypoints, draw_mask_overlay

SUMMARY_FILE = 'summary.json'
KEYPOINTS_FILE = 'keypoints.jsonl'
OVERLAY_FILE = 'overlay.mp4'

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
        out_dir (str): Output folder; created on commit.
        kind (str): 'mask', 'parts' or 'keypoints'.
        overlay (bool): Write ``overlay.mp4``. Defaults to True.
        fps (float): Frame rate of the overlay video. Defaults to 24.
        overwrite (bool): Replace an ``out_dir`` that holds files (on
            commit only). Defaults to False.
        queue_size (int): Frames waiting to be written at most.
            Defaults to 8.

    Raises:
        FileExistsError: ``out_dir`` is a file, or a folder holding files
            and ``overwrite`` is off.
    """

    def __init__(self,
                 out_dir: str,
                 kind: str,
                 overlay: bool = True,
                 fps: float = 24.0,
                 overwrite: bool = False,
                 queue_size: int = 8):
        if kind not in ('mask', 'parts', 'keypoints'):
            raise ValueError('TrackingResultsWriter: kind must be mask, parts '
                             f'or keypoints, got {kind!r}')
        self.out_dir = osp.abspath(out_dir)
        if osp.exists(self.out_dir):
            if not osp.isdir(self.out_dir):
                raise FileExistsError(
                    f'Output folder "{out_dir}" exists and is a file')
            held = os.listdir(self.out_dir)
            if held and not overwrite:
                raise FileExistsError(
                    f'Output folder "{out_dir}" already holds results '
                    f'({len(held)} entries, e.g. "{sorted(held)[0]}"); '
                    'choose another output folder, or overwrite it '
                    '(tools/track.py --overwrite)')
        self.kind = kind
        self.overlay = overlay
        self.fps = float(fps) if fps and fps > 0 else 24.0
        parent = osp.dirname(self.out_dir)
        os.makedirs(parent, exist_ok=True)
        self.staging = tempfile.mkdtemp(
            prefix=f'.{osp.basename(self.out_dir)}.partial-', dir=parent)
        # mkdtemp makes it private (0o700); results get the usual mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.staging, 0o777 & ~umask)
        self._video: Optional[cv2.VideoWriter] = None
        self._keypoints = (open(osp.join(self.staging, KEYPOINTS_FILE), 'w')
                           if kind == 'keypoints' else None)
        self._closed = False
        # Labels and overlay are encoded by a thread each: both encoders
        # release the GIL, so the two run in parallel.
        self._sinks = [_BackgroundSink(self._write_labels, queue_size)]
        if overlay:
            self._sinks.append(
                _BackgroundSink(self._write_overlay, queue_size))

    @property
    def frames_written(self) -> int:
        """Frames whose labels have been written."""
        return self._sinks[0].done

    def write(self, name: str, image: np.ndarray, pred: np.ndarray) -> None:
        """Queues one frame's prediction.

        Args:
            name (str): Frame name (the PNG's name without extension).
            image (np.ndarray): (H, W, 3) uint8 BGR frame, for the overlay.
            pred (np.ndarray): (H, W) ids, or (J, 2) keypoints (x, y).
        """
        self._raise_if_failed()
        for sink in self._sinks:
            sink.put((name, image, pred))

    def _raise_if_failed(self) -> None:
        for sink in self._sinks:
            if sink.error is not None:
                raise RuntimeError(
                    f'Writing results to "{self.out_dir}" failed: '
                    f'{sink.error}') from sink.error

    def _write_labels(self, name: str, image: np.ndarray,
                      pred: np.ndarray) -> None:
        if self.kind == 'keypoints':
            self._keypoints.write(json.dumps(dict(
                frame=name,
                keypoints=np.round(pred, 3).tolist())) + '\n')
        else:
            save_palette_png(pred, osp.join(self.staging, name + '.png'))

    def _write_overlay(self, name: str, image: np.ndarray,
                       pred: np.ndarray) -> None:
        drawn = (draw_keypoints(image, pred) if self.kind == 'keypoints'
                 else draw_mask_overlay(image, pred))
        if self._video is None:
            path = osp.join(self.staging, OVERLAY_FILE)
            self._video = cv2.VideoWriter(
                path, cv2.VideoWriter_fourcc(*'mp4v'), self.fps,
                (drawn.shape[1], drawn.shape[0]))
            if not self._video.isOpened():
                raise RuntimeError(
                    'OpenCV cannot write an mp4v video here; run without '
                    'the overlay (tools/track.py --no-overlay)')
        self._video.write(drawn)

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sink in self._sinks:
            sink.close()
        if self._video is not None:
            self._video.release()
        if self._keypoints is not None:
            self._keypoints.close()

    def commit(self, summary: dict) -> str:
        """Finishes writing, adds ``summary.json`` and moves into place.

        Returns:
            str: The output folder.
        """
        self._close()
        self._raise_if_failed()
        tmp = osp.join(self.staging, SUMMARY_FILE + '.tmp')
        with open(tmp, 'w') as f:
            json.dump(summary, f, indent=2)
            f.write('\n')
        os.replace(tmp, osp.join(self.staging, SUMMARY_FILE))
        replaced = None
        if osp.exists(self.out_dir):
            replaced = tempfile.mkdtemp(
                prefix=f'.{osp.basename(self.out_dir)}.replaced-',
                dir=osp.dirname(self.out_dir))
            os.rename(self.out_dir, osp.join(replaced, 'old'))
        os.rename(self.staging, self.out_dir)
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)
        self.staging = None
        return self.out_dir

    def abort(self) -> None:
        """Stops writing and deletes everything written so far."""
        self._close()
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None

    def __enter__(self) -> 'TrackingResultsWriter':
        return self

    def __exit__(self, *exc_info) -> None:
        if self.staging is not None:
            self.abort()
