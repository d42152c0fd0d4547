"""What the subcommands share: the detector options, input expansion, and the CLI's own error."""

from __future__ import annotations

import argparse
import glob
from collections.abc import Sequence
from pathlib import Path

from srn.video import VIDEO_SUFFIXES

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "UserError", "add_detector_args", "build_detector", "expand_inputs"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


class UserError(Exception):
    """A usage error of the command line (it may name flags); printed as one line, exit code 2."""


def expand_inputs(patterns: Sequence[str]) -> list[Path]:
    """Files, folders (searched recursively for images) and globs, in a stable order, each once."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.exists() or path.is_symlink():
            found.append(path)
        elif glob.has_magic(pattern):
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
            files = [p for p in matches if p.is_file()]
            if not files:
                raise UserError(f"{pattern}: no file matches")
            found.extend(files)
        else:
            raise UserError(f"{pattern}: no such file or folder")
    unique, seen = [], set()
    for path in found:
        if path not in seen:
            seen.add(path)
            unique.append(path)
    return unique


def add_detector_args(parser: argparse.ArgumentParser) -> None:
    """The options that choose and configure the detector (``srn detect``, ``srn eval``)."""
    group = parser.add_argument_group("detector")
    group.add_argument("--weights", help="srn checkpoint, the release's SRN.pth, or an .onnx file from srn export (default: the shipped model)")
    group.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    group.add_argument("--max-size", type=int, default=2100, help="downscale images whose longer side exceeds this")
    group.add_argument("--batch-size", type=int, default=8)
    group.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: bf16 weights, BatchNorm folded, channels_last")
    group.add_argument("--cuda-graphs", action="store_true", help="capture and replay CUDA graphs per input shape (CUDA only; for video and same-size images)")
    group.add_argument("--threads", type=int, help="CPU threads for the network (default: torch's, one per core)")


def build_detector(args: argparse.Namespace, score_thresh: float, nms_iou: float | None = None):
    """The :class:`srn.inference.Detector` that the detector options describe."""
    import torch

    from srn.inference import Detector

    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        return Detector(
            weights=args.weights,
            threads=args.threads,
            device=args.device,
            score_thresh=score_thresh,
            nms_iou=nms_iou,
            max_size=args.max_size,
            batch_size=args.batch_size,
            precision=args.precision,
            cuda_graphs=args.cuda_graphs,
        )
    except ValueError as exc:  # bad settings: CUDA graphs on the CPU, a max size too small
        raise UserError(str(exc).strip().splitlines()[0]) from None
