"""The `trainguard` command.

Each subcommand lives in the module that owns its concept and exposes two functions:
`add_arguments(parser)` and `run(args) -> int` (the exit status). The table below is the only
place that knows them all; modules are imported only when their subcommand runs, so that
`trainguard sensor` never loads the operator's dependencies.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import Protocol, cast

from trainguard import __version__


class Command(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...
    def run(self, args: argparse.Namespace) -> int: ...


# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "crdgen": ("trainguard.cli.generate", "write the CRD, the sample schema and the chart's admission policy"),
    "demo": ("trainguard.cli.demo", "the ROME incident, caught and contained, on the embedded control plane"),
    "replay": ("trainguard.cli.replay", "run the detection engine over recorded traces"),
    "run": ("trainguard.handlers.command", "run the operator (kopf): AgentTrainingJobs in, guarded Jobs out"),
    "sensor": ("trainguard.sensor.command", "run the per-pod sensor (sidecar)"),
}


#: Subcommands that need an extra: the sensor image installs trainguard without it.
EXTRAS: dict[str, str] = {"run": "operator", "demo": "operator"}


def _load(name: str) -> Command:
    try:
        return cast(Command, importlib.import_module(COMMANDS[name][0]))
    except ModuleNotFoundError as error:
        if name not in EXTRAS:
            raise
        sys.exit(
            f"trainguard {name}: {error.name} is not installed; this install lacks the"
            f" {EXTRAS[name]!r} extra (pip install 'trainguard[{EXTRAS[name]}]')"
        )


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainguard", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"trainguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Only the chosen subcommand's module is imported; the others get a bare parser for --help.
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _load(name).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(args_list).parse_args(args_list)
    try:
        return _load(args.command).run(args)
    except BrokenPipeError:
        # Whoever read our output went away (`trainguard replay ... | head`): stop quietly with the
        # status of a process killed by SIGPIPE, as other command-line tools do, and point stdout
        # at /dev/null so that flushing it at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
