"""Regenerate the shipped int8 model, ``srn/assets/srn_mobilenet_v2.int8.onnx``, from a checkpoint.

``Detector()`` runs this file on the CPU (through onnxruntime) and the ``.pt`` beside it on a GPU, so
after a new ``srn_mobilenet_v2.pt`` is shipped, run this on it. Steps: export the checkpoint as a
raw-layout fp32 ONNX file (``srn export onnx``), then quantise it statically (QDQ, per-channel int8
weights, uint8 activations, MinMax ranges; :func:`srn.export.quantize.quantize_onnx`) on a
deterministic sample of training photos: evenly spaced over the sorted paths, 50 by default. The
calibration photos must not be held-out photos.

The shipped file was made with (the training split of the held-out packing, ``tools/pack_faces.py
--side 512``)::

    python tools/export_default_int8.py --weights srn/assets/srn_mobilenet_v2.pt \\
        --calibration-list .gpu/data512/train_faces.txt .gpu/data512/train_wider.txt \\
        --out srn/assets/srn_mobilenet_v2.int8.onnx

``--calibration DIR`` samples a folder instead (recursively). The same inputs give the same bytes;
the script prints the file's SHA-256 and the calibration photos it used.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

from srn.errors import SRNError
from srn.export.onnx import export_checkpoint
from srn.export.quantize import (
    DEFAULT_CALIBRATION_COUNT,
    DEFAULT_CALIBRATION_SIZE,
    quantize_onnx,
    read_quantization,
    select_calibration_images,
    select_listed_images,
)

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=ROOT / "srn/assets/srn_mobilenet_v2.pt", help="the srn checkpoint to quantise")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--calibration", type=Path, metavar="DIR", help="folder of calibration photos (searched recursively)")
    source.add_argument("--calibration-list", type=Path, nargs="+", metavar="TXT",
                        help="text files naming calibration photos relative to their folder (one per line, or WIDER's layout)")
    parser.add_argument("--count", type=int, default=DEFAULT_CALIBRATION_COUNT, help="calibration photos (default 50)")
    parser.add_argument("--size", type=int, default=DEFAULT_CALIBRATION_SIZE, help="calibration input side, pixels (default 512)")
    parser.add_argument("--out", type=Path, default=ROOT / "srn/assets/srn_mobilenet_v2.int8.onnx")
    args = parser.parse_args(argv)
    try:
        if args.calibration is not None:
            photos = select_calibration_images(args.calibration, args.count)
        else:
            photos = select_listed_images(args.calibration_list, args.count)
        with tempfile.TemporaryDirectory(prefix="srn_int8_") as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            export_checkpoint(args.weights, fp32)
            report = quantize_onnx(fp32, args.out, photos, input_size=args.size, activation_type="quint8")
        record = read_quantization(args.out)
    except SRNError as exc:
        print(f"export_default_int8: error: {exc}", file=sys.stderr)
        return 2
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(f"calibration photos ({report.calibration_images}):", file=sys.stderr)
    for path in photos:
        print(f"  {path}", file=sys.stderr)
    print(f"wrote {args.out}: {record['quantization']}, {record['activation_type']} activations, "
          f"{report.calibration_images} photos at {report.input_size} px, {report.int8_bytes} bytes, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
