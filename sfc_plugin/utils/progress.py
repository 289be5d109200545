import sys
import time
from typing import Optional, TextIO


class FrameProgressBar:
    """A one-line progress display in frames and frames per second.

    On a terminal the line is redrawn in place (at most every
    ``interval`` seconds); in a log (not a terminal) one line is printed
    every ``log_interval`` seconds, so logs stay short.

    Args:
        total (int, optional): Frames expected; None shows the count only.
        file (TextIO): Where to write. Defaults to ``sys.stderr``.
        width (int): Bar width in characters. Defaults to 30.
        interval (float): Seconds between redraws on a terminal.
            Defaults to 0.2.
        log_interval (float): Seconds between lines in a log.
            Defaults to 10.
    """

    def __init__(self,
                 total: Optional[int] = None,
                 file: Optional[TextIO] = None,
                 width: int = 30,
                 interval: float = 0.2,
                 log_interval: float = 10.0):
        self.total = total if total and total > 0 else None
        self.file = sys.stderr if file is None else file
        self.width = width
        self.is_tty = bool(getattr(self.file, 'isatty', lambda: False)())
        self.interval = interval if self.is_tty else log_interval
        self.count = 0
        self.start = time.perf_counter()
        self._last_draw = -float('inf')
        self._drawn_in_place = False

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def frames_per_second(self) -> float:
        return self.count / self.elapsed if self.count else 0.0

    def line(self) -> str:
        fps = self.frames_per_second
        text = f'{self.count} frames, {fps:.2f} frames/s'
        if self.total is None:
            return text
        done = min(self.count / self.total, 1.0)
        filled = int(round(done * self.width))
        bar = '#' * filled + '-' * (self.width - filled)
        eta = (self.total - self.count) / fps if fps > 0 else float('nan')
        eta_text = time.strftime('%H:%M:%S', time.gmtime(eta)) if (
            eta == eta and eta >= 0) else '--:--:--'
        return (f'[{bar}] {self.count}/{self.total} frames, {fps:.2f} '
                f'frames/s, ETA {eta_text}')

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.perf_counter()
        if now - self._last_draw >= self.interval:
            self._draw()
            self._last_draw = now

    def _write(self, text: str) -> None:
        # A display must never fail the work it shows: a closed stderr or a
        # pipe whose reader has gone turns the bar off.
        if self.file is None:
            return
        try:
            self.file.write(text)
            self.file.flush()
        except (OSError, ValueError, AttributeError):
            self.file = None

    def _draw(self, end: str = '') -> None:
        if self.is_tty:
            self._write('\r' + self.line() + ' ' * 4 + end)
        else:
            self._write(self.line() + '\n')
        self._drawn_in_place = self.is_tty and not end

    def close(self) -> None:
        """Draws the final state and ends the line."""
        self._draw(end='\n')

    def abandon(self) -> None:
        """Ends a line redrawn in place without drawing it again, so that
        what follows (an error) starts on a line of its own."""
        if self._drawn_in_place:
            self._write('\n')
            self._drawn_in_place = False
