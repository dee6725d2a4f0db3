"""SIGINT and SIGTERM as exceptions, so `finally` blocks (atomic writes) remove their temporaries before exit.

The CLI installs the handlers around a command; the first signal raises KeyboardInterrupt (SIGINT) or Terminated
(SIGTERM) in the main thread, and later ones are ignored so that the cleanup itself is not cut short. Exit codes
follow the shell: 128 + signal number (130, 143).

Test hook: with MATQ_TEST_HOLD_WRITE=FILE in the environment, every atomic write writes its temporary's path to FILE
and then waits (up to 120 s) before finishing, so a test can signal the process while a write is in progress.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

HOLD_ENV = "MATQ_TEST_HOLD_WRITE"


class Terminated(BaseException):
    """SIGTERM (a BaseException like KeyboardInterrupt: `except Exception` must not swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


def _ignore_further() -> None:
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _ignore_further()
    raise KeyboardInterrupt


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _ignore_further()
    raise Terminated(signum)


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Route SIGINT/SIGTERM through exceptions while the body runs; the previous handlers come back after it (the
    CLI's main() also runs inside test processes). Outside the main thread signals cannot be handled: a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, _on_sigint)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def exit_code(exc: BaseException) -> int:
    return 128 + (exc.signum if isinstance(exc, Terminated) else signal.SIGINT)


def hold_for_test(tmp: Path) -> None:
    """The documented test hook above; a no-op unless MATQ_TEST_HOLD_WRITE is set."""
    marker = os.environ.get(HOLD_ENV)
    if not marker:
        return
    Path(marker).write_text(str(tmp))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.05)
