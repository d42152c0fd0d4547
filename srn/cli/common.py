"""What the subcommands share: the detector options, argparse types, and the CLI's own error."""

from __future__ import annotations

import argparse
import difflib
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

from srn.errors import printable

__all__ = [
    "HelpFormatter",
    "Report",
    "UserError",
    "add_detector_args",
    "available_cores",
    "build_detector",
    "default_threads",
    "default_workers",
    "float_in",
    "int_at_least",
    "live_ending",
    "OneLineParser",
    "worker_death",
]


class UserError(Exception):
    """A usage error of the command line (it may name flags); printed as one line, exit code 2."""


# -- argparse types: a bad value is one usage line, exit 2, before anything runs ---------------------


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type`` for integers ``>= low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"int_at_least_{low}"
    return parse


def float_in(low: float, high: float = math.inf, low_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type`` for finite numbers in ``[low, high]`` (``(low, high]`` with ``low_open``);
    ``high=inf`` means no upper bound."""
    bracket = "(" if low_open else "["
    interval = f"{bracket}{low:g}, {high:g}]" if math.isfinite(high) else None

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        above_low = value > low if low_open else value >= low
        if not (above_low and value <= high and math.isfinite(value)):  # NaN fails every comparison
            wanted = f"must be in {interval}" if interval else f"must be a finite number {'>' if low_open else '>='} {low:g}"
            raise argparse.ArgumentTypeError(f"{wanted}, got {text}")
        return value

    parse.__name__ = "float_in"
    return parse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (their examples keep their lines), and every option's default at
    the end of its help, ``(default: X)``, unless the help already speaks of its default. Options
    without a value (flags) and those whose default is None (chosen at run time; their help says
    how) show none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""  # argparse formats a None help as no help; the default is still worth a word
        default = action.default
        if not action.option_strings or default is None or isinstance(default, bool) or default is argparse.SUPPRESS:
            return text
        if "default" in text or action.nargs == 0:
            return text
        return f"{text} (default: %(default)s)"


class OneLineParser(argparse.ArgumentParser):
    """An argument parser that reports a usage error as one line, ``"<prog>: error: <message>"``,
    exit 2 (argparse prints the whole usage block first; ``-h`` still shows it). Subcommand parsers
    made from it are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        """argparse's, with a mistyped option answered by the subcommand that was named, with the
        closest of its options: ``srn detect: error: unrecognized arguments: --ouput x.jpg; did you
        mean --out?`` (Python 3.12's ``suggest_on_error``, for every version)."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self._command_parser(getattr(parsed, "command", None))
            parser.error(f"unrecognized arguments: {' '.join(extras)}{parser.suggestion(extras)}")
        return parsed

    def _command_parser(self, command: str | None) -> OneLineParser:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction) and command in action.choices:
                found = action.choices[command]
                return found if isinstance(found, OneLineParser) else self
        return self

    def suggestion(self, unknown: list[str]) -> str:
        """``"; did you mean --out?"`` for the first unknown option close to one of this parser's, or ``""``."""
        options = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
        for word in unknown:
            if word.startswith("--"):
                close = difflib.get_close_matches(word.split("=", 1)[0], options, n=1, cutoff=0.6)
                if close:
                    return f"; did you mean {close[0]}?"
        return ""


def add_detector_args(parser: argparse.ArgumentParser, zoom_pass: int | None = 0, zoom_max_face: float = 32.0,
                      zoom_default: str | None = None) -> None:
    """The options that choose and configure the detector (``srn detect``, ``srn eval``); each value
    is range-checked when parsed. ``zoom_pass``, ``zoom_max_face``: the command's default second pass
    (0: none; None: the command decides, as ``zoom_default`` says in words; :class:`srn.inference.ZoomPass`)."""
    group = parser.add_argument_group("detector")
    group.add_argument("--weights", help="srn checkpoint, the release's SRN.pth, or an .onnx file from srn export (default: the shipped model)")
    group.add_argument("--device", help="cpu, cuda, cuda:1, or a GPU number (0 = cuda:0) (default: cuda when available)")
    group.add_argument("--max-size", type=int_at_least(32), default=2100,
                       help="an image whose longer side exceeds this many pixels is shrunk to it before detection (boxes still come back "
                            "in the original's pixels); lower it for speed and memory, raise it for tiny faces in large photos (at least 32)")
    group.add_argument("--min-size", type=int_at_least(0), default=None, metavar="PIXELS",
                       help="upscale an image whose longer side is shorter than this to it before detection, so that small faces "
                            f"get found (boxes still come back in the original's pixels); 32 to --max-size, 0 for never (default: never)")
    group.add_argument("--zoom-pass", type=int_at_least(0), default=zoom_pass, metavar="PIXELS",
                       help="also run each image upscaled so that its longer side is this many pixels (at most --max-size), and add "
                            "the faces under --zoom-max-face px that this second pass finds: more small faces, for the second pass's "
                            f"time; an image already that large runs once; 0 for none (default: {zoom_default or zoom_pass or 'none'})")
    group.add_argument("--zoom-max-face", type=float_in(0.0, 2100.0, low_open=True), default=zoom_max_face, metavar="PIXELS",
                       help=f"the faces kept from --zoom-pass: shorter side under this many pixels of the original (default: {zoom_max_face:g})")
    group.add_argument("--batch-size", type=int_at_least(1), default=8, help="images per forward pass")
    group.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: bf16 weights, BatchNorm folded, channels_last")
    group.add_argument("--cuda-graphs", action="store_true", help="capture and replay CUDA graphs per input shape (CUDA only; for video and same-size images)")
    group.add_argument("--threads", type=int_at_least(1),
                       help="CPU threads for the network (default: OMP_NUM_THREADS when set, else the cores that --workers leaves "
                            "less one, at least 1)")


def build_detector(args: argparse.Namespace, score_thresh: float, nms_iou: float | None = None):
    """The :class:`srn.inference.Detector` that the detector options describe."""
    import torch

    from srn.inference import Detector, ZoomPass

    threads = args.threads
    if threads is None and "OMP_NUM_THREADS" not in os.environ:
        threads = default_threads(getattr(args, "workers", None) or 0)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        zoom = ZoomPass(args.zoom_pass, args.zoom_max_face) if args.zoom_pass else None
        return Detector(
            weights=args.weights,
            threads=threads,
            device=args.device,
            score_thresh=score_thresh,
            nms_iou=nms_iou,
            max_size=args.max_size,
            min_size=args.min_size or None,  # 0: never upscale
            zoom_pass=zoom,
            batch_size=args.batch_size,
            precision=args.precision,
            cuda_graphs=args.cuda_graphs,
        )
    except ValueError as exc:  # bad settings: CUDA graphs on the CPU, a max size too small
        raise UserError(str(exc).strip().splitlines()[0]) from None


# -- defaults that fit the machine -------------------------------------------------------------------


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers(cores: int | None = None) -> int:
    """Image-decoding processes by default: none on 1 or 2 cores, where a worker only takes a core
    from the network (benchmarks/RESULTS.md, "Defaults that fit the machine"); 1 on 3 to 7 cores;
    then one per 4 cores, at most 4 (beyond that the network, not decoding, is the bottleneck)."""
    cores = available_cores() if cores is None else cores
    if cores <= 2:
        return 0
    return min(4, max(1, cores // 4))


def default_threads(workers: int, cores: int | None = None) -> int:
    """The network's CPU threads by default: the cores that ``workers`` decoding processes leave,
    less one for the main process's own work (and anything else the machine runs), at least 1.

    Every thread of an OpenMP convolution waits for the slowest at each barrier, so one thread per
    core stalls whenever any other work takes a core: on the shared 2-core development machine two
    threads made ``srn detect`` 4 times slower than one (benchmarks/RESULTS.md, "Defaults that fit
    the machine")."""
    cores = available_cores() if cores is None else cores
    return max(1, cores - workers - 1)


# -- what a command says it did ----------------------------------------------------------------------


def plural(count: int, noun: str) -> str:
    """``1 face``, ``2 faces``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


class Report:
    """What ``srn detect`` and ``srn anonymize`` say on stderr.

    On a terminal, one line per input as it is done (``photo.jpg: 27 faces``, with ``-> FILE``
    when a file was written for it), printed above the progress bar; everywhere, a closing summary
    (``3 images, 41 faces, 0 failed in 2.1 s``). Failures are listed after the summary, each on
    its own line, as they have always been.

    Args:
        unit: what an input is called in the summary ("image", "frame").
        per_item: print the per-input lines (default: when stderr is a terminal).
    """

    def __init__(self, unit: str = "image", per_item: bool | None = None) -> None:
        self.unit = unit
        self.per_item = stderr_is_terminal() if per_item is None else per_item
        self.start = time.perf_counter()
        self.items = 0
        self.faces = 0
        self.failures: list[str] = []
        self.progress = None  # a tqdm bar, whose line the per-input lines are printed above

    def item(self, name: str, faces: int, written: str | os.PathLike[str] | None = None) -> None:
        """One input done, with ``faces`` faces found."""
        self.items += 1
        self.faces += faces
        if self.per_item:
            line = f"{name}: {plural(faces, 'face')}" + (f" -> {os.fsdecode(written)}" if written is not None else "")
            self.say(line)

    def failed(self, line: str) -> None:
        """One input that could not be done: ``line`` names it and says why (shown escaped, so
        that a name holding a newline stays on its line: :func:`srn.errors.printable`)."""
        self.failures.append(printable(line))

    def say(self, line: str) -> None:
        line = printable(line)
        if self.progress is not None and not getattr(self.progress, "disable", True):
            self.progress.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def summary(self, tail: str = "") -> str:
        """The closing line, e.g. ``3 images, 41 faces, 0 failed in 2.1 s``."""
        seconds = time.perf_counter() - self.start
        return (f"{plural(self.items + len(self.failures), self.unit)}, {plural(self.faces, 'face')}, "
                f"{len(self.failures)} failed in {seconds:.1f} s{tail}")

    def close(self, command: str, where: str = "", tail: str = "") -> int:
        """Print the summary (``tail`` after it, e.g. `` -> faces.jsonl``) and the failures;
        returns the exit code (1 when any input failed). ``where`` names the process under torchrun."""
        print(self.summary(where + tail), file=sys.stderr)
        if self.failures:
            print(f"srn {command}: {len(self.failures)} of {self.items + len(self.failures)} files failed{where}:", file=sys.stderr)
            for line in self.failures:
                print(f"  {line}", file=sys.stderr)
            return 1
        return 0


def live_ending(summary) -> str:
    """How a live run (a :class:`srn.inference.loop.RunSummary`) ended, in words."""
    if summary.interrupted:
        return "stopped by Ctrl-C"
    return "the stream broke off" if summary.error else "the stream ended"


def worker_death(exc: BaseException) -> str | None:
    """The one line for a decoding worker that died (the OOM killer's SIGKILL, say); None for any
    other error (:func:`srn.inference.loop.worker_died` tells them apart)."""
    if not isinstance(exc, RuntimeError | OSError | EOFError):
        return None
    from srn.inference.loop import worker_died

    detail = worker_died(exc)
    if detail is None:
        return None
    return f"an image-decoding process died ({detail}); perhaps it ran out of memory: try fewer --workers, or --workers 0"


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal (where per-input lines help; in a log they are noise)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
