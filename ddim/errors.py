"""The one exception type the library raises for problems the user can fix."""


class DDIMError(Exception):
    """A user-facing error: bad input, missing files, a corrupt checkpoint.

    The message is one line that names the problem and the fix; the CLI prints it and exits 2.
    """


def one_line(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` (at most ``limit`` characters of it), for one-line reports."""
    text = str(exc).strip().splitlines()
    first = text[0][:limit] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
