"""``srn bench``: SRN against torchvision's RetinaNet-R50-FPN on this device, in one run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from srn.atomic import atomic_write_text
from srn.cli.common import HelpFormatter, UserError, int_at_least
from srn.paths import check_input_file, check_output_file

BENCH_HELP = """\
Benchmark SRN against torchvision's RetinaNet-R50-FPN on this device.

By default it measures what srn detect runs: the model shipped with the package, on the CPU its
int8 ONNX copy through onnxruntime, on a GPU its PyTorch checkpoint. --model srn_r50 measures the
paper's SRN-R50 with random weights (its speed does not depend on them), --weights FILE any
checkpoint or any .onnx file from srn export onnx (run as it is by onnxruntime; its FLOPs are not
counted, except for the shipped int8 file's). The peer always has random weights.

Printed: latency per size (network and post-processing), GFLOP, peak memory, the FLOP rate reached
(TFLOP/s) and throughput. On a GPU also that rate as a share of a large bf16 matmul measured in the
same run; not on the CPU, where convolutions are not matmuls and such a share can pass 100%.

Examples:
  srn bench --device cpu --sizes 640x480 --iters 5 --batch 0
  srn bench --model srn_r50 --device cuda --precision bf16 --channels-last --json bench.json
  srn bench --weights srn_r50.pt --compile --sizes 640x480 1024x1024 --batch 16
  srn bench --device cpu --backend onnxruntime --threads 1 --sizes 640x480 --batch 0
  srn bench --device cpu --backend torch --threads 1 --sizes 640x480 --batch 0
  srn bench --weights model.int8.onnx --device cpu --threads 1 --sizes 640x480
"""

# srn.analysis.bench's names and BenchConfig's defaults, spelled out: importing it would import
# torch for `srn bench -h` (tests/test_bench.py checks that they agree).
MODELS = ("shipped", "srn_r50")
DTYPES = ("bf16", "fp32")
BACKENDS = ("torch", "onnxruntime")
DEFAULT_SIZES = [(480, 640), (1024, 1024)]
DEFAULT_WARMUP, DEFAULT_ITERS = 2, 10
DEFAULT_BACKBONE, DEFAULT_WIDTH, DEFAULT_PEER_CLASSES = "resnet50", 256, 2
DEFAULT_BACKEND = None  # what srn detect runs on that device


def parse_size(text: str) -> tuple[int, int]:
    """"640x480" (W x H) as (480, 640)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} must look like 640x480 (width x height)") from None
    if width < 32 or height < 32:
        raise argparse.ArgumentTypeError(f"size {text!r}: both sides must be at least 32")
    return height, width


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``srn bench`` to the ``srn`` command line."""
    parser = sub.add_parser("bench", help="benchmark SRN against RetinaNet-R50", description=BENCH_HELP, formatter_class=HelpFormatter)
    add_bench_args(parser)
    parser.set_defaults(func=run)


def add_bench_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=MODELS, default=None,
                        help="shipped: the model srn detect uses; srn_r50: the paper's SRN-R50, random weights (default: shipped)")
    parser.add_argument("--weights", help="benchmark this srn checkpoint, SRN.pth or .onnx file (srn export onnx, "
                        "run by onnxruntime as it is) instead of --model")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    # --precision, as srn detect names it; --dtype, its first name here, still works.
    parser.add_argument("--precision", "--dtype", dest="dtype", choices=DTYPES, default="fp32",
                        help="bf16: SRN's bf16 inference copy, the peer under autocast")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format for both models")
    parser.add_argument("--compile", action="store_true", help="torch.compile SRN's network")
    parser.add_argument("--warmup", type=int_at_least(0), default=DEFAULT_WARMUP, help="untimed runs first")
    parser.add_argument("--iters", type=int_at_least(1), default=DEFAULT_ITERS, help="timed runs; the median is reported")
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=list(DEFAULT_SIZES), metavar="WxH", help="default: 640x480 1024x1024")
    parser.add_argument("--batch", type=int_at_least(0), help="throughput batch on the first size (default 16 on GPU, 2 on CPU; 0 skips)")
    parser.add_argument("--backbone", default=None,
                        help=f"the random network's backbone instead of SRN-R50's (implies --model srn_r50; default {DEFAULT_BACKBONE})")
    parser.add_argument("--width", type=int_at_least(1), default=None,
                        help=f"the random network's head width instead of SRN-R50's (implies --model srn_r50; default {DEFAULT_WIDTH})")
    parser.add_argument("--no-peer", dest="peer", action="store_false", help="skip RetinaNet")
    parser.add_argument("--peer-classes", type=int_at_least(1), default=DEFAULT_PEER_CLASSES, help="RetinaNet classes (2: one face class; 91: COCO)")
    parser.add_argument("--threads", type=int_at_least(1), help="CPU threads (default: torch's; 1 gives repeatable numbers on a shared machine)")
    parser.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                        help="torch, or onnxruntime (its CPU provider; --model and .pt weights are exported to fp32 ONNX "
                        "first); the peer stays in PyTorch (default: what srn detect runs on that device: the shipped "
                        "int8 ONNX file through onnxruntime on the CPU, torch on a GPU)")
    parser.add_argument("--matmul-size", type=int_at_least(1), help="n of the n x n x n bf16 matmul that the GPU's rate is measured with (default 8192)")
    parser.add_argument("--cuda-graphs", action="store_true", help="run SRN's network and post-processing as CUDA graphs (srn.inference.runner)")
    parser.add_argument("--image", metavar="PHOTO", help="time on this photo, resized to each size (default: noise)")
    parser.add_argument("--throughput-size", type=parse_size, metavar="WxH", help="size of the throughput run (default: the first of --sizes)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")


def config_from_args(args: argparse.Namespace):
    """The :class:`srn.analysis.bench.BenchConfig` that the options describe; options that
    contradict each other are one :class:`UserError`."""
    from srn.analysis.bench import BenchConfig

    if args.weights and args.model:
        raise UserError("give --model or --weights, not both")
    shaped = args.backbone is not None or args.width is not None
    model = args.model or ("srn_r50" if shaped and not args.weights else "shipped")  # a shape asks for the random network
    if model == "shipped" and shaped and not args.weights:
        raise UserError("--backbone and --width shape the random network of --model srn_r50")
    return BenchConfig(
        model=model, device=args.device, dtype=args.dtype, channels_last=args.channels_last, compile=args.compile,
        warmup=args.warmup, iters=args.iters, sizes=tuple(tuple(s) for s in args.sizes), batch=args.batch,
        backbone=args.backbone or DEFAULT_BACKBONE, width=args.width or DEFAULT_WIDTH, weights=args.weights, peer=args.peer,
        peer_classes=args.peer_classes, threads=args.threads, backend=args.backend, cuda_graphs=args.cuda_graphs,
        image=args.image, matmul_size=args.matmul_size,
        throughput_size=tuple(args.throughput_size) if args.throughput_size else None,
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from srn.analysis.bench import format_table, run_benchmark

    if args.weights:
        check_input_file(args.weights, "weights file")
    if args.image:
        check_input_file(args.image, "photo")
    if args.json:
        check_output_file(args.json, inputs=[p for p in (args.weights, args.image) if p])
    config = config_from_args(args)
    try:
        results = run_benchmark(config, log=lambda message: print(message, file=sys.stderr))
    except torch.OutOfMemoryError:
        raise UserError("out of memory; lower --batch or --sizes") from None
    except ValueError as exc:
        raise UserError(str(exc).strip().splitlines()[0]) from None
    print(format_table(results))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(results, indent=1) + "\n")
    return 0
