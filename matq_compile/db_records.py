"""Shape checks of MetaSchedule's JSON-lines database rows, so a file that is valid JSON but not a database is refused
with its line number instead of a C++ error from deep inside JSONDatabase.

    database_workload.json       one [structural hash: str, module: str] per line
    database_tuning_record.json  one [workload index: int < number of workloads, [trace, run_secs, target, args]]
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from matq_compile.io_utils import FormatError


def _problem(name: str, row: list[Any], n_workloads: int) -> str | None:
    if name == "database_workload.json":
        if len(row) != 2 or not all(isinstance(x, str) for x in row):
            return "expected [structural hash, module] (two strings)"
        return None
    if len(row) != 2 or isinstance(row[0], bool) or not isinstance(row[0], int) or not isinstance(row[1], list) \
            or len(row[1]) != 4:
        return "expected [workload index, [trace, run_secs, target, args_info]]"
    if not 0 <= row[0] < n_workloads:
        return f"workload index {row[0]} is out of range (the database holds {n_workloads} workloads)"
    return None


def check_rows(path: Path, rows: list[tuple[int, list[Any]]], n_workloads: int) -> None:
    """rows: (1-based line number, parsed list) of every non-empty line of `path`."""
    for n, row in rows:
        problem = _problem(path.name, row, n_workloads)
        if problem:
            raise FormatError(f"corrupt tuning database {path} line {n}: {problem}")
