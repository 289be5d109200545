"""FrameProgressBar: shown on a terminal or in a log, never failing the
work it shows."""
import io

import pytest

from sfc_plugin.utils.progress import FrameProgressBar


class Terminal(io.StringIO):

    def isatty(self):
        return True


def test_log_lines_and_terminal_redraws():
    log = io.StringIO()
    bar = FrameProgressBar(4, file=log, log_interval=0)
    bar.update()
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].startswith('[' + '#' * 8)
    assert '1/4 frames' in lines[0]
    tty = Terminal()
    bar = FrameProgressBar(None, file=tty, interval=0)
    bar.update(3)
    bar.close()
    assert tty.getvalue().startswith('\r3 frames') and (
        tty.getvalue().endswith('\n'))


def test_an_abandoned_line_is_ended_once():
    """An error after a redraw in place starts on its own line."""
    tty = Terminal()
    bar = FrameProgressBar(10, file=tty, interval=0)
    bar.update()
    bar.abandon()
    bar.abandon()
    assert tty.getvalue().count('\n') == 1 and tty.getvalue().endswith('\n')
    log = io.StringIO()
    bar = FrameProgressBar(10, file=log, log_interval=0)
    bar.update()
    before = log.getvalue()
    bar.abandon()  # log lines are whole already
    assert log.getvalue() == before


class Broken(io.StringIO):

    def __init__(self, error):
        super().__init__()
        self.error = error
        self.writes = 0

    def write(self, text):
        self.writes += 1
        raise self.error


@pytest.mark.parametrize('error', [
    BrokenPipeError(32, 'Broken pipe'), OSError(9, 'Bad file descriptor'),
    ValueError('I/O operation on closed file')
])
def test_a_stderr_that_cannot_be_written_turns_the_bar_off(error):
    out = Broken(error)
    bar = FrameProgressBar(3, file=out, log_interval=0)
    for _ in range(3):
        bar.update()
    bar.close()
    bar.abandon()
    assert out.writes == 1 and bar.count == 3
