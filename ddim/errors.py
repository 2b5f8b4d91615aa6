"""The one exception type the library raises for problems the user can fix."""


class DDIMError(Exception):
    """A user-facing error: bad input, missing files, a corrupt checkpoint.

    The message is one line that names the problem and the fix; the CLI prints it and exits 2.
    """
