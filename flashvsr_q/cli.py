"""The ``flashvsr-q`` command. Each subcommand is one small function that calls the library API.

Subcommands register themselves in ``COMMANDS`` as (add_arguments, run) pairs; ``main`` turns any
``FlashVSRError`` (and the usual file errors) into a one-line message and a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from flashvsr_q.errors import FlashVSRError

AddArgs = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, AddArgs, Run]] = {}


def command(name: str, help: str) -> Callable[[AddArgs], AddArgs]:
    """Register ``add_arguments``; its ``run`` is the function named ``run_<name>`` in this module."""

    def register(add_arguments: AddArgs) -> AddArgs:
        COMMANDS[name] = (help, add_arguments, lambda args: globals()[f"run_{name.replace('-', '_')}"](args))
        return add_arguments

    return register


# ---------------------------------------------------------------------------------------------------------------
# commands (one section each; library imports stay inside run_* so `--help` is fast)
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flashvsr-q", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from flashvsr_q import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command][2](args) or 0
    except FlashVSRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
