"""Every subcommand's ``--help`` (and so every flag) stays as it was: a snapshot taken before the task-layer move.

Regenerate deliberately with ``python tests/test_cli_help.py`` after an intended change of the command line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from flashvsr_q.cli import build_parser

SNAPSHOT = Path(__file__).parent / "data" / "cli_help.json"


def help_texts() -> dict[str, str]:
    os.environ["COLUMNS"] = "120"  # argparse wraps to the terminal width
    parser = build_parser()
    texts = {"": parser.format_help()}
    for action in parser._subparsers._group_actions:  # the one subparsers action
        for name, sub in action.choices.items():
            texts[name] = sub.format_help()
    return texts


def test_every_subcommand_help_is_unchanged():
    expected = json.loads(SNAPSHOT.read_text())
    got = help_texts()
    assert sorted(got) == sorted(expected), "subcommands added or removed: update the snapshot deliberately"
    for name in expected:
        assert got[name] == expected[name], f"`flashvsr-q {name} --help` changed"


def test_help_reads_like_help():
    """No reStructuredText markup, and every subcommand shows a few examples."""
    texts = help_texts()
    for name, text in texts.items():
        assert "``" not in text and ":func:" not in text, f"markup in `flashvsr-q {name} --help`"
        assert "examples:\n  flashvsr-q" in text, f"`flashvsr-q {name} --help` has no examples"


if __name__ == "__main__":  # regenerate the snapshot
    SNAPSHOT.write_text(json.dumps(help_texts(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}", file=sys.stderr)
