"""What the CLI reports as one line with exit code 2: errors the user can fix (bad input, files, permissions).

Anything else (TypeError, AttributeError, ...) is a bug in matq and keeps its traceback."""
from __future__ import annotations

# ValueError covers io_utils.FormatError; OSError covers missing, unreadable, unwritable and wrong-kind paths
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, KeyError)


def describe(e: BaseException) -> str:
    """One line for the user: OSErrors raised by the system read 'what: path', not '[Errno 13] ...: 'path''."""
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else str(e.filename)
        return f"{e.strerror}: {where}"
    if isinstance(e, KeyError) and e.args:
        return f"missing key {e.args[0]!r}"
    return str(e).splitlines()[0] if str(e) else type(e).__name__
