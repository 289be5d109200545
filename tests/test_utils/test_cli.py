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


@pytest.mark.parametrize('fails', [False, True])
def test_an_unwritable_stderr_leaves_the_exit_status_to_the_work(
        python, subprocess_env, fails):
    """stderr closed by the shell (``2>&-``, which leaves a descriptor
    that cannot be written) or a pipe whose reader has gone: what the tool
    says there is lost, and its exit status is its work's."""
    import os
    import subprocess
    code = ('import sys\n'
            'from sfc_plugin.utils.cli import run_tool\n'
            'def main(argv):\n'
            '    print("Incomplete: x", file=sys.stderr)\n'
            f'    if {fails}:\n'
            '        raise ValueError("bad input")\n'
            'try:\n'
            '    run_tool(main, "t.py", [])\n'
            'finally:\n'
            '    print("done", flush=True)\n')

    def unwritable_stderr():
        os.dup2(os.open(os.devnull, os.O_RDONLY), 2)

    proc = subprocess.run([python, '-c', code], env=subprocess_env,
                          stdout=subprocess.PIPE, text=True,
                          preexec_fn=unwritable_stderr)
    assert (proc.returncode, proc.stdout) == (1 if fails else 0, 'done\n')
