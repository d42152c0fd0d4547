"""The ``srn`` command line: one module per subcommand; nothing in the library imports it.

Starting must be fast: ``srn``, ``srn --version`` and every ``srn COMMAND -h`` answer without
importing torch. So only the named subcommand's parser is built (the others are listed by their
one-line summary), and each subcommand imports the heavy modules inside its ``run``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from srn.cli import anonymize, bench, convert, detect, evaluate, export, imbalance, train
from srn.cli.common import OneLineParser, UserError, worker_death
from srn.errors import InferenceOutOfMemory, SRNError, printable
from srn.version import __version__

HELP = """\
SRN face detection: detect, anonymise, convert, train, evaluate, export and benchmark.

Examples:
  srn detect photo.jpg                          faces as one JSON line on stdout
  srn detect photo.jpg --out drawn.jpg          the photo with its faces drawn
  srn detect photos/ --format csv --out faces.csv
  srn detect 'val/**/*.jpg' --format wider --out preds/ --score-thresh 0
  srn detect group.jpg --save-vis vis/ --weights SRN.pth --device cuda
  srn detect photos/ --out faces.jsonl --resume  streamed, one line per image
  srn detect 0 --out webcam.mp4                 the first webcam, until Ctrl-C
  srn anonymize photo.jpg                       photo_anonymized.jpg beside it
  srn anonymize photo.jpg -o blurred.jpg        blurred.jpg
  srn anonymize photos/ clip.mp4 --out anonymized/
  srn convert SRN.pth srn_r50.pt                the authors' checkpoint into ours
  srn train srn_r50_widerface train.epochs=2
  srn eval wider --pred-dir preds/ --gt-dir eval_gt/
  srn export onnx --out srn.onnx
  srn bench --device cpu --sizes 640x480 --batch 0

Run 'srn COMMAND -h' for a command's options.
"""

# name: (module, one-line summary in `srn -h`); the module's register() builds the full parser.
COMMANDS = {
    "detect": (detect, "detect faces in images, videos and live sources"),
    "anonymize": (anonymize, "blur, pixelate or black out faces in images, videos and live sources"),
    "convert": (convert, "convert the authors' SRN.pth into an srn checkpoint"),
    "train": (train, "train SRN (one GPU, CPU, or many with torchrun)"),
    "eval": (evaluate, "evaluate on WIDER FACE, FDDB, AFW or PASCAL Face with their own protocols"),
    "imbalance": (imbalance, "the paper's class-imbalance analysis on a WIDER boxes file (no network)"),
    "export": (export, "export the detector (ONNX)"),
    "bench": (bench, "benchmark SRN against RetinaNet-R50"),
}


def _named_command(argv: Sequence[str]) -> str | None:
    """The subcommand that ``argv`` names: its first word that is not an option."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``srn`` parser, with the full parser of ``command`` (every command's when None) and
    the others as their one-line summaries."""
    parser = OneLineParser(prog="srn", description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"srn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, summary) in COMMANDS.items():
        if command is None or name == command:
            module.register(sub)
        else:
            sub.add_parser(name, help=summary, add_help=False)
    return parser


# The exit code of a run whose reader of stdout went away (``srn detect DIR | head -1``): what a
# shell reports for a process that SIGPIPE ended (128 + 13), which Python's default of ignoring
# SIGPIPE would otherwise turn into a traceback.
EXIT_BROKEN_PIPE = 141


def error_line(command: str, exc: BaseException) -> str:
    """The one line of an error: ``srn COMMAND: error: <path>: <what>``, with control characters
    and undecodable bytes of file names escaped (:func:`srn.errors.printable`), so that a name
    holding a newline never tears it."""
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.strerror:  # the builtin's own "[Errno 2] ..." is noise
        text = f"{os.fsdecode(exc.filename)}: {exc.strerror}" if exc.filename is not None else exc.strerror
    return f"srn {command}: error: {printable(text or type(exc).__name__)}"


def _stdout_gone() -> int:
    """stdout's reader closed the pipe: stop quietly. Later writes, the interpreter's final flush
    included, go to /dev/null, so that no second BrokenPipeError is printed at exit (the recipe of
    Python's documentation for SIGPIPE)."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_BROKEN_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _named_command(argv)
    parser = build_parser(command if command in COMMANDS else "")
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except BrokenPipeError:
        return _stdout_gone()
    except InferenceOutOfMemory:  # the one place that names the options that help
        print(f"srn {args.command}: error: out of memory; lower --max-size or --batch-size", file=sys.stderr)
        return 2
    except (UserError, SRNError) as exc:
        print(error_line(args.command, exc), file=sys.stderr)
        return 2
    except (RuntimeError, OSError, EOFError) as exc:
        # A decoding worker killed (the OOM killer) can be reported a moment after the run has
        # handled it, wherever the main process then is: still one line, and what was written stays.
        # Any other OSError is what no check foresaw (a file removed meanwhile): one line too.
        death = worker_death(exc)
        if death is None and not isinstance(exc, OSError):
            raise
        print(f"srn {args.command}: error: {printable(death)}" if death else error_line(args.command, exc), file=sys.stderr)
        return 1 if death else 2
    except KeyboardInterrupt:
        print(f"srn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
