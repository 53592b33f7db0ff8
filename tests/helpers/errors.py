"""The one-line error contract: what bad input must print, and the exit code a command ends with."""
import pytest

import train


def assert_one_line_error(stderr: str, *fragments, alone: bool = False) -> None:
    """stderr ends with a single ``error: ...`` line holding ``fragments`` and shows no traceback;
    progress bars and log lines before it are fine unless ``alone`` (then that line is all of stderr)."""
    assert "error: " in stderr and "Traceback" not in stderr, stderr[-3000:]
    line = stderr[stderr.rindex("error: "):].rstrip("\n")
    assert "\n" not in line and "\r" not in line, line
    if alone:
        assert stderr.strip().startswith("error: ") and "\n" not in stderr.strip(), stderr[-3000:]
    for fragment in fragments:
        assert str(fragment) in line, (fragment, line)


def exit_code(argv, main=train.main):
    """What ``main(argv)`` returns, or the code of the SystemExit it raises."""
    try:
        return main(argv)
    except SystemExit as done:
        return done.code


def one_line_error(capsys, main, argv) -> str:
    """The single ``error: ...`` line that ``main(argv)`` prints, alone on stderr, exiting with code 2."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert_one_line_error(err, alone=True)
    return err
