"""What the subcommands share: the detector options, argparse types, and the CLI's own error."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

__all__ = [
    "UserError",
    "add_detector_args",
    "build_detector",
    "float_in",
    "int_at_least",
    "OneLineParser",
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


class OneLineParser(argparse.ArgumentParser):
    """An argument parser that reports a usage error as one line, ``"<prog>: error: <message>"``,
    exit 2 (argparse prints the whole usage block first; ``-h`` still shows it). Subcommand parsers
    made from it are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def add_detector_args(parser: argparse.ArgumentParser) -> None:
    """The options that choose and configure the detector (``srn detect``, ``srn eval``); each value
    is range-checked when parsed."""
    group = parser.add_argument_group("detector")
    group.add_argument("--weights", help="srn checkpoint, the release's SRN.pth, or an .onnx file from srn export (default: the shipped model)")
    group.add_argument("--device", help="cpu, cuda, cuda:1, or a GPU number (0 = cuda:0) (default: cuda when available)")
    group.add_argument("--max-size", type=int_at_least(32), default=2100, help="downscale images whose longer side exceeds this (at least 32)")
    group.add_argument("--min-size", type=int_at_least(0), default=None, metavar="PIXELS",
                       help="upscale an image whose longer side is shorter than this to it before detection, so that small faces "
                            "get found (boxes still come back in the original's pixels); 32 to --max-size, 0 for never (default: never)")
    group.add_argument("--batch-size", type=int_at_least(1), default=8, help="images per forward pass (default 8)")
    group.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: bf16 weights, BatchNorm folded, channels_last")
    group.add_argument("--cuda-graphs", action="store_true", help="capture and replay CUDA graphs per input shape (CUDA only; for video and same-size images)")
    group.add_argument("--threads", type=int_at_least(1), help="CPU threads for the network (default: torch's, one per core)")


def build_detector(args: argparse.Namespace, score_thresh: float, nms_iou: float | None = None):
    """The :class:`srn.inference.Detector` that the detector options describe."""
    import torch

    from srn.inference import Detector

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return Detector(
            weights=args.weights,
            threads=args.threads,
            device=args.device,
            score_thresh=score_thresh,
            nms_iou=nms_iou,
            max_size=args.max_size,
            min_size=args.min_size or None,  # 0: never upscale
            batch_size=args.batch_size,
            precision=args.precision,
            cuda_graphs=args.cuda_graphs,
        )
    except ValueError as exc:  # bad settings: CUDA graphs on the CPU, a max size too small
        raise UserError(str(exc).strip().splitlines()[0]) from None
