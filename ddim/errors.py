"""The one exception type the library raises for problems the user can fix, and the one-line texts errors and
warnings are printed as."""


class DDIMError(Exception):
    """A user-facing error: bad input, missing files, a corrupt checkpoint.

    The message is one line that names the problem and the fix; the CLI prints it and exits 2.
    """


def one_line(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` (at most ``limit`` characters of it), for one-line reports."""
    text = str(exc).strip().splitlines()
    first = text[0][:limit] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def printable(text: str) -> str:
    """``text`` as one line a terminal shows as it reads: each character that ``repr`` escapes (C0 and C1 controls
    such as ESC, CR and newlines, DEL, bidirectional overrides, other non-printables) written as ``repr`` writes it
    (``\\x1b``, ``\\n``, ``\\u202e``). A message may hold strings from a sweep store, which anyone with access to
    the database can write: they cannot move the cursor, recolour or clear the terminal or start a line of their
    own. Every line the harness prints on stderr passes through it (``bench.console.warn``, the CLI's own)."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
