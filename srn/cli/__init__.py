"""The ``srn`` command line: one module per subcommand; nothing in the library imports it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from srn.version import __version__
from srn.cli import anonymize, bench, convert, detect, evaluate, export, imbalance, train
from srn.cli.common import OneLineParser, UserError
from srn.errors import SRNError

HELP = """\
SRN face detection: detect, anonymise, convert, train, evaluate, export and benchmark.

Examples:
  srn detect photo.jpg                          faces as JSON on stdout
  srn detect photos/ --format csv --out faces.csv
  srn detect 'val/**/*.jpg' --format wider --out preds/ --score-thresh 0.01
  srn detect group.jpg --save-vis vis/ --weights SRN.pth --device cuda
  srn detect photos/ --out faces.jsonl --workers 4 [--resume]   streamed, one line per image
  srn anonymize photos/ clip.mp4 --out anonymized/            blur every face
  srn convert SRN.pth srn_r50.pt                the authors' checkpoint into ours
  srn train srn_r50_widerface train.epochs=2
  srn eval wider --pred-dir preds/ --gt-dir eval_gt/
  srn export onnx --out srn.onnx

Run 'srn COMMAND -h' for a command's options.
"""

COMMANDS = (detect, anonymize, convert, train, evaluate, imbalance, export, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="srn", description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"srn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (UserError, SRNError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"srn {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"srn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
