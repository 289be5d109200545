"""What every command-line tool of sfc_plugin shares: its error contract.

A user's mistake (a missing file, a bad value, a config that does not
parse, a checkpoint of another model) ends the tool with one line on stderr
that names the file or argument, ``<tool>: error: <message>``, and exit
status 1; Ctrl-C and SIGTERM end it with status 130. The traceback is shown
only on request: ``--debug``, or ``SFC_PLUGIN_DEBUG=1`` in the environment.

    def main(argv=None):
        args = parse_args(argv)
        ...

    if __name__ == '__main__':
        run_tool(main, 'track.py')
"""
import argparse
import os
import signal
import sys
import threading
from typing import Callable, Optional, Sequence

from mmengine.config import DictAction

DEBUG_ENV = 'SFC_PLUGIN_DEBUG'

#: Exceptions that a user's input causes: reported in one line. Anything
#: else is reported in one line too, marked as unexpected. MemoryError:
#: settings or inputs too large for the host (sfc_plugin.utils.memory).
USER_ERRORS = (OSError, ValueError, TypeError, KeyError, IndexError,
               ImportError, RuntimeError, SyntaxError, AssertionError,
               NotImplementedError, MemoryError)


def debug_requested(argv: Optional[Sequence[str]] = None) -> bool:
    """Whether the traceback of an error should be shown."""
    argv = sys.argv[1:] if argv is None else argv
    return '--debug' in argv or os.environ.get(DEBUG_ENV, '') not in ('',
                                                                     '0')


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    """Adds ``--debug`` (read by :func:`run_tool` before parsing, so that
    it covers errors of the parsing itself)."""
    parser.add_argument(
        '--debug', action='store_true',
        help=f'show the traceback of an error (or set {DEBUG_ENV}=1)')


def one_line(err: BaseException) -> str:
    """An exception's message on one line (the type where it says little)."""
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])
    else:
        text = str(err)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and lines[0].startswith('Caught ') and (
            'DataLoader worker' in lines[0]) and len(lines) > 2:
        # torch re-raises a worker's error with the worker's traceback as
        # its message: the error is its last line ("OSError: Cannot ...").
        _, sep, message = lines[-1].partition(': ')
        lines = [message if sep else lines[-1]]
    text = '; '.join(lines)
    if not text or isinstance(err, (KeyError, IndexError)) and len(
            text) < 12:
        text = f'{type(err).__name__}: {text or "(no message)"}'
    return text


class ConfigOptionsAction(DictAction):
    """mmengine's ``--cfg-options`` parser, refusing an item that is not
    ``KEY=VALUE`` with a usage error instead of an unpacking error."""

    def __call__(self, parser, namespace, values, option_string=None):
        for item in values if isinstance(values, list) else [values]:
            key, sep, value = item.partition('=')
            if not sep or not key.strip():
                parser.error(f'{option_string}: expected KEY=VALUE, got '
                             f'"{item}"')
            if value.count('[') != value.count(']') or value.count(
                    '(') != value.count(')'):
                parser.error(f'{option_string}: unbalanced brackets in '
                             f'"{item}"')
        super().__call__(parser, namespace, values, option_string)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _interrupted_within(err: BaseException) -> bool:
    """Whether ``err`` was raised while handling a KeyboardInterrupt: a
    library's bare ``except`` turned the interrupt into its own error
    (mmengine's config formatting: "Failed to format the config file")."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


class _UnfailingStream:
    """A text stream whose writes never raise: a tool's messages must not
    fail a run whose results are complete when stderr is closed (``2>&-``)
    or a pipe whose reader has gone (track.py's closing "Incomplete: ..."
    line turned such runs into exit status 1, with no message)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass

    def __getattr__(self, name):
        return getattr(self._stream, name)


def run_tool(main: Callable[[Optional[Sequence[str]]], object],
             prog: str,
             argv: Optional[Sequence[str]] = None,
             interrupted: str = 'Interrupted.') -> None:
    """Runs a tool's ``main(argv)`` under the error contract above.

    SIGTERM (a ``kill``, a scheduler's time limit) is handled as Ctrl-C, so
    the cleanup that an interrupted run does happens for both.

    Args:
        main (callable): The tool's entry point, taking ``argv``.
        prog (str): The tool's name in messages, e.g. 'track.py'.
        argv (Sequence[str], optional): Arguments; ``sys.argv[1:]`` by
            default.
        interrupted (str): Printed on Ctrl-C / SIGTERM.
    """
    debug = debug_requested(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    stderr = sys.stderr
    if stderr is not None:
        sys.stderr = _UnfailingStream(stderr)
    try:
        _run(main, prog, argv, interrupted, debug)
    finally:
        sys.stderr = stderr


def _run(main, prog: str, argv, interrupted: str, debug: bool) -> None:
    try:
        main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f'\n{interrupted}', file=sys.stderr)
        raise SystemExit(130)
    except Exception as err:  # the one place every error is reported
        if debug:
            raise
        if _interrupted_within(err):
            print(f'\n{interrupted}', file=sys.stderr)
            raise SystemExit(130) from None
        hint = '' if isinstance(err, USER_ERRORS) else (
            f' (unexpected {type(err).__name__}: rerun with --debug and '
            'report it)')
        print(f'{prog}: error: {one_line(err)}{hint}', file=sys.stderr)
        raise SystemExit(1)


__all__ = [
    'ConfigOptionsAction', 'DEBUG_ENV', 'add_debug_argument',
    'debug_requested', 'one_line', 'run_tool'
]
