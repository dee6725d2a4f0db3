"""Logging and progress for the CLI. Library modules only call logging.getLogger(__name__)."""
from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

T = TypeVar("T")


def enable_logging(verbose: bool = False) -> None:
    """Install one stderr handler on the package logger; called once by the CLI, never by library code."""
    logger = logging.getLogger("matq_compile")
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """tqdm over items, silent when stderr is not a terminal, with log lines routed around the bar."""
    with logging_redirect_tqdm(loggers=[logging.getLogger("matq_compile")]):
        yield from tqdm(items, desc=desc, total=total, disable=not sys.stderr.isatty(), leave=False)


@contextlib.contextmanager
def progress_bar(total: int, desc: str) -> Iterator[tqdm]:
    """A manual tqdm bar (call .update()), same TTY rule as progress()."""
    with logging_redirect_tqdm(loggers=[logging.getLogger("matq_compile")]):
        with tqdm(total=total, desc=desc, disable=not sys.stderr.isatty(), leave=False) as bar:
            yield bar
