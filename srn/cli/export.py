"""``srn export onnx``: the detector as an ONNX file, with its settings in the file's metadata."""

from __future__ import annotations

import argparse

from srn.cli.common import float_in, int_at_least
from srn.paths import check_output_file

EXPORT_HELP = """\
Export a detector for deployment.

Examples:
  srn export onnx --weights srn_r50.pt --out srn.onnx
  srn export onnx --weights srn_r50.pt --out srn_nms.onnx --postprocess
  srn export onnx --weights SRN.pth --out srn.onnx --opset 18 --input-size 1024 1024

Run it with srn.Detector('srn.onnx').detect('photo.jpg'), or srn detect photo.jpg --weights srn.onnx.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from srn.export.onnx import DEFAULT_OPSET

    parser = sub.add_parser("export", help="export the detector (ONNX)", description=EXPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    formats = parser.add_subparsers(dest="export_format", metavar="FORMAT", required=True)
    onnx_parser = formats.add_parser("onnx", help="ONNX with dynamic batch, height and width", description=EXPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    onnx_parser.add_argument("--weights", help="srn checkpoint or the release's SRN.pth (default: the shipped model)")
    onnx_parser.add_argument("--out", required=True, help="the .onnx file to write")
    onnx_parser.add_argument("--opset", type=int_at_least(11), default=DEFAULT_OPSET, help=f"ONNX opset, at least 11: the graph's Resize needs it (default {DEFAULT_OPSET})")
    onnx_parser.add_argument("--postprocess", action="store_true", help="build STC/STR decoding, top-k and NMS into the graph")
    onnx_parser.add_argument("--input-size", type=int_at_least(32), nargs=2, default=(480, 640), metavar=("H", "W"), help="size of the tracing sample (the file takes any size)")
    onnx_parser.add_argument("--min-score", type=float_in(0.0, 1.0), default=0.0, help="with --postprocess: drop detections below this in the graph")
    onnx_parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from srn.export.onnx import export_checkpoint

    check_output_file(args.out, inputs=[args.weights] if args.weights else [])
    metadata = export_checkpoint(
        args.weights,
        args.out,
        opset=args.opset,
        postprocess=args.postprocess,
        sample_size=tuple(args.input_size),
        min_score=args.min_score,
    )
    layout = "boxes/scores/num_detections (post-processing in the graph)" if metadata.postprocess_in_graph else f"{len(metadata.output_names)} raw per-level outputs"
    print(f"wrote {args.out} ({metadata.backbone}, opset {metadata.opset}, {layout})")
    return 0
