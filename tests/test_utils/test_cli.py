"""sfc_plugin.utils.cli: the tools' error contract."""
import pytest

from sfc_plugin.utils.cli import one_line, run_tool


def test_an_interrupt_a_library_turned_into_its_own_error_is_130(capsys):
    """mmengine formats configs under a bare `except`: Ctrl-C or SIGTERM
    there came out as "Failed to format the config file", status 1."""

    def main(argv):
        try:
            raise KeyboardInterrupt
        except:  # noqa: E722 (what the library does)
            raise SyntaxError('Failed to format the config file')

    with pytest.raises(SystemExit) as exit_:
        run_tool(main, 'tool.py', [], interrupted='Interrupted: nothing.')
    assert exit_.value.code == 130
    assert capsys.readouterr().err.strip() == 'Interrupted: nothing.'


def test_a_data_workers_error_is_its_last_line():
    err = OSError('Caught OSError in DataLoader worker process 0.\n'
                  'Original Traceback (most recent call last):\n'
                  '  File "x.py", line 1, in <module>\n'
                  'OSError: Cannot decode frame "a.jpg": the file is empty\n')
    assert one_line(err) == 'Cannot decode frame "a.jpg": the file is empty'
    assert one_line(ValueError('a\n b')) == 'a; b'
