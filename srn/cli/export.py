"""``srn export onnx``: the detector as an ONNX file, with its settings in the file's metadata."""

from __future__ import annotations

import argparse

from srn.cli.common import UserError, float_in, int_at_least
from srn.paths import check_output_file

EXPORT_HELP = """\
Export a detector for deployment.

Examples:
  srn export onnx --weights srn_r50.pt --out srn.onnx
  srn export onnx --weights srn_r50.pt --out srn_nms.onnx --postprocess
  srn export onnx --weights SRN.pth --out srn.onnx --opset 18 --input-size 1024 1024
  srn export onnx --weights srn_r50.pt --out srn.int8.onnx --int8 --calibration photos/
  srn export onnx --weights srn.onnx --out srn.int8.onnx --int8 --calibration photos/ --calibration-count 100

--int8 quantises statically (QDQ, per-channel int8 weights, uint8 activations), with activation
ranges measured on a deterministic sample of the photos under --calibration (evenly spaced over the
sorted paths); they should look like the photos the model will see, and must not be photos it will be
evaluated on. --weights may then also be an fp32 .onnx file from this command.

Run it with srn.Detector('srn.onnx').detect('photo.jpg'), or srn detect photo.jpg --weights srn.onnx.
"""


# srn.export.onnx's DEFAULT_OPSET and srn.export.quantize's DEFAULT_CALIBRATION_COUNT, spelled out:
# importing them would import torch for `srn --help` (tests/test_export.py checks that they agree).
DEFAULT_OPSET = 17
DEFAULT_CALIBRATION_COUNT = 50


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export", help="export the detector (ONNX)", description=EXPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    formats = parser.add_subparsers(dest="export_format", metavar="FORMAT", required=True)
    onnx_parser = formats.add_parser("onnx", help="ONNX with dynamic batch, height and width", description=EXPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    onnx_parser.add_argument("--weights", help="srn checkpoint or the release's SRN.pth (default: the shipped model)")
    onnx_parser.add_argument("--out", required=True, help="the .onnx file to write")
    onnx_parser.add_argument("--opset", type=int_at_least(11), default=DEFAULT_OPSET, help=f"ONNX opset, at least 11: the graph's Resize needs it (default {DEFAULT_OPSET})")
    onnx_parser.add_argument("--postprocess", action="store_true", help="build STC/STR decoding, top-k and NMS into the graph")
    onnx_parser.add_argument("--input-size", type=int_at_least(32), nargs=2, default=(480, 640), metavar=("H", "W"), help="size of the tracing sample; the file takes any size (default 480 640)")
    onnx_parser.add_argument("--min-score", type=float_in(0.0, 1.0), default=0.0, help="with --postprocess: drop detections below this in the graph (default 0: keep all)")
    onnx_parser.add_argument("--int8", action="store_true", help="write a static int8 model (needs --calibration; not with --postprocess)")
    onnx_parser.add_argument("--calibration", metavar="DIR", help="with --int8: folder of photos to calibrate activation ranges on (searched recursively)")
    onnx_parser.add_argument("--calibration-count", type=int_at_least(1), default=DEFAULT_CALIBRATION_COUNT, metavar="N",
                             help=f"with --int8: photos sampled from --calibration (default {DEFAULT_CALIBRATION_COUNT})")
    onnx_parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from srn.export.onnx import export_checkpoint

    if args.int8:
        return run_int8(args)
    if args.calibration:
        raise UserError("--calibration is for --int8")
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


def run_int8(args: argparse.Namespace) -> int:
    """``--int8``: export fp32 (unless --weights is already an fp32 .onnx file), then quantise."""
    import tempfile
    from pathlib import Path

    from srn.export.onnx import export_checkpoint
    from srn.export.quantize import quantize_onnx, select_calibration_images

    if not args.calibration:
        raise UserError("--int8 needs --calibration DIR: a folder of photos to calibrate on")
    if args.postprocess:
        raise UserError("--int8 quantises the raw outputs; it cannot be combined with --postprocess")
    check_output_file(args.out, inputs=[args.weights] if args.weights else [])
    photos = select_calibration_images(args.calibration, args.calibration_count)
    with tempfile.TemporaryDirectory(prefix="srn_export_") as tmp:
        if args.weights and Path(args.weights).suffix.lower() == ".onnx":
            fp32 = Path(args.weights)
        else:
            fp32 = Path(tmp) / "fp32.onnx"
            export_checkpoint(args.weights, fp32, opset=args.opset, sample_size=tuple(args.input_size))
        report = quantize_onnx(fp32, args.out, photos)
    skipped = f", {len(report.skipped)} unreadable skipped (first: {report.skipped[0][0]})" if report.skipped else ""
    print(f"wrote {args.out} (int8, QDQ per-channel, {report.activation_type} activations calibrated on "
          f"{report.calibration_images} photos{skipped}; {report.int8_bytes / 2**20:.1f} MiB, fp32 {report.fp32_bytes / 2**20:.1f} MiB)")
    return 0
