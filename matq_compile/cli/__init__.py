"""`matq` command line: one subcommand per module, each a thin layer over one library call.

Every subcommand module exposes `register(subparsers)`, which adds its parser and sets `func` (args -> int).
Heavy imports (torch, tvm) happen inside `func`, so `matq --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from matq_compile._log import enable_logging
from matq_compile.cli.errors import USER_ERRORS, describe
from matq_compile.interrupts import Terminated, exit_code, signals_as_exceptions

# Order here is the order in `matq --help`: the pipeline, stage by stage.
SUBCOMMANDS = ("quantize", "eval", "tune", "bench_kernels", "search", "compile", "run")

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="matq", description="Sliceable MatGPTQ checkpoints compiled with Apache TVM.")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"matq_compile.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"matq_compile.cli.{name}":
                continue  # subcommand not present in this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    enable_logging(args.verbose)
    try:
        with signals_as_exceptions():
            return int(args.func(args) or 0)
    except USER_ERRORS as e:
        log.debug("traceback of the error below", exc_info=True)  # --verbose
        log.error("%s", describe(e))
        return 2
    except (KeyboardInterrupt, Terminated) as e:
        log.error("interrupted (%s); partial outputs removed", "SIGINT" if isinstance(e, KeyboardInterrupt)
                  else "SIGTERM")
        return exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
