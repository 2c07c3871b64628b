"""The ``flashvsr-q`` command: a thin layer over the tasks (``flashvsr_q.tasks``).

``main`` parses the command line, runs the subcommand (``flashvsr_q.cli.commands``) and turns any
``FlashVSRError`` (and the usual file errors) into a one-line message and a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version

from flashvsr_q.cli.commands import COMMANDS
from flashvsr_q.errors import FlashVSRError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flashvsr-q", description="The ``flashvsr-q`` command. Each subcommand is "
                                     "one small function that calls the library API.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line, for reports that record it
    if args.version:
        try:
            print(version("flashvsr-q"))
        except PackageNotFoundError:
            print("unknown (not installed)")
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
