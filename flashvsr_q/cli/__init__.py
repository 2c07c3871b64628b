"""The ``flashvsr-q`` command: a thin layer over the tasks (``flashvsr_q.tasks``).

``main`` parses the command line, runs the subcommand (``flashvsr_q.cli.commands``) and turns any
``FlashVSRError`` (and the usual file errors) into a one-line message and a non-zero exit.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from importlib.metadata import PackageNotFoundError, version

from flashvsr_q.cli.commands import COMMANDS
from flashvsr_q.errors import FlashVSRError

__all__ = ["build_parser", "main"]

DESCRIPTION = "flashvsr-q: FlashVSR video super-resolution (x4) on your own GPU: upscale, quantize, evaluate."
EPILOG = """examples:
  flashvsr-q demo                                           the tour, on the small model that ships with flashvsr-q
  flashvsr-q upscale input.mp4 -o output.mp4 --vram 8GB     upscale a video (audio kept, resumable)
  flashvsr-q fetch v1.1                                     download the official FlashVSR v1.1 weights
  flashvsr-q quantize --recipe int8-weight-only -o int8/    a compressed checkpoint

`flashvsr-q COMMAND --help` for each command; docs/ for the guides."""

# a few examples under each command's --help (what people look for first in video tools)
EXAMPLES = {
    "app": ["flashvsr-q app", "flashvsr-q app --host 0.0.0.0 --port 7860 --output-dir results/"],
    "upscale": ["flashvsr-q upscale input.mp4 -o output.mp4",
                "flashvsr-q upscale input.mp4 -o output.mp4 --checkpoint ~/FlashVSR-v1.1 --vram 8GB",
                "flashvsr-q upscale frames/ -o frames-x4/ --tile 192x24 --resume",
                "flashvsr-q upscale input.mp4 -o out.mp4 --recipe int8-weight-only --dry-run"],
    "bench": ["flashvsr-q bench --model small --size 512x512 --frames 25,100 --tile off,256x32",
              "flashvsr-q bench --checkpoint ~/FlashVSR-v1.1 --recipe none,int8-weight-only --device cuda -o r.json"],
    "quantize": ["flashvsr-q quantize --recipe int8-weight-only -o int8/",
                 "flashvsr-q quantize --recipe w8a8-int8-smoothquant --checkpoint ~/FlashVSR-v1.1 "
                 "--calibration stats.safetensors -o w8a8/ --device cuda",
                 "flashvsr-q quantize --recipe nf4 --dry-run"],
    "inspect": ["flashvsr-q inspect int8/", "flashvsr-q inspect ~/FlashVSR-v1.1 --no-hash --json"],
    "degrade": ["flashvsr-q degrade hr.mp4 -o lr.mp4",
                "flashvsr-q degrade hr.mp4 -o lr/ --preset realbasicvsr --seed 0"],
    "eval": ["flashvsr-q eval --dataset heldout --recipe none,int8-weight-only -o report/",
             "flashvsr-q eval --dataset clips/ --checkpoint ~/FlashVSR-v1.1 --metrics psnr,ssim,lpips -o report/"],
    "train": ["flashvsr-q train --recipe recipes/train-small.yaml -o runs/small",
              "flashvsr-q train --recipe recipes/train-small.yaml -o runs/small --resume"],
    "demo": ["flashvsr-q demo", "flashvsr-q demo --frames 17 -o my-demo --overwrite"],
    "qat": ["flashvsr-q qat --recipe recipes/qat-w4a8.yaml --footage builtin -o runs/qat --steps 200 --compare"],
    "calibrate": ["flashvsr-q calibrate --set builtin -o stats.safetensors",
                  "flashvsr-q calibrate --footage my_clips/ --recipe w8a8-int8-smoothquant -o stats.safetensors"],
    "sensitivity": ["flashvsr-q sensitivity --scheme nf4 --footage builtin -o sensitivity/",
                    "flashvsr-q sensitivity --scheme nf4 --footage builtin -o sens/ --budget 1.0GB "
                    "--recipe-out mix.yaml"],
    "export": ["flashvsr-q export int8/ --format comfy-int8-convrot -o flashvsr_v1.1_dit_int8_convrot.safetensors"],
    "fetch": ["flashvsr-q fetch v1.1", "flashvsr-q fetch v1.1 --full --dir ~/models"],
    "batch": ["flashvsr-q batch videos/ -o upscaled/ --workers 2",
              "flashvsr-q batch list.txt -o /shared/upscaled/ --address auto --checkpoint /shared/FlashVSR-v1.1"],
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flashvsr-q", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        examples = "\n".join(f"  {line}" for line in EXAMPLES.get(name, []))
        add_arguments(sub.add_parser(name, help=help_text, description=help_text,
                                     epilog=f"examples:\n{examples}" if examples else None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a job scheduler, a container stop): unwound like Ctrl-C, so files close and the run can
    be resumed, then exit 143."""


def _terminate(signum: int, frame) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
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
    except KeyboardInterrupt as exc:
        print(f"error: {'terminated' if isinstance(exc, Terminated) else 'interrupted'}{resume_hint(args)}",
              file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130


def resume_hint(args: argparse.Namespace) -> str:
    """For an interrupted ``upscale``: the command that continues it (its segments and state stay on disk)."""
    if args.command != "upscale":
        return ""
    argv = [a for a in args.argv if a != "--resume"]
    return f"; the finished segments are kept, continue with: {shlex.join(['flashvsr-q', *argv, '--resume'])}"


if __name__ == "__main__":
    sys.exit(main())
