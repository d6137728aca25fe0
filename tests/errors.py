"""The one check behind "bad input gets one clear error line" (DESIGN.md), for the tests.

    one_line_error(lambda: NGramTeacher(10, 0), "order")        # a raised ValueError
    assert_one_error(call(cli.main, argv), "--resume")          # an entry point's (code, out, err)

Both fail unless the message is a single line that names every needle (str() of each, so a
Path or a number can be a needle), and both return it for further checks.
"""
import pytest


def names_all(message, *needles):
    """Assert `message` is one line (no line break of any kind) containing str(needle) for
    each needle; return it."""
    assert message.splitlines() == [message], message
    for needle in needles:
        assert str(needle) in message, (needle, message)
    return message


def one_line_error(fn, *needles, error=ValueError):
    """Call fn(); expect an `error` (ValueError unless told) whose message is one line naming
    every needle. Returns the message."""
    with pytest.raises(error) as info:
        fn()
    return names_all(str(info.value), *needles)


def assert_one_error(result, *needles):
    """result = (exit code, stdout, stderr) of an entry point: exit code 2 and stderr exactly
    one `error:` line naming every needle. Returns that line."""
    code, _, err = result
    assert code == 2, (code, err)
    line = err.strip()
    assert line.startswith("error:"), err
    return names_all(line, *needles)
