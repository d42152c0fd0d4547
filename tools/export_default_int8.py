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

``--calibration DIR`` samples a folder instead (recursively). The same inputs give the same bytes
on one installation; the script prints the file's SHA-256 and the calibration photos it used. A re-export
need not give the shipped file's bytes: the shipped checkpoint re-exported on 2026-12-07 moved
held-out bins of few faces by up to 0.044 of AP (``benchmarks/RESULTS.md``, "Quantisation noise").

``--keep-from OLD.pt OLD.int8.onnx`` is for a fine-tune of ``OLD.pt`` that changed some layers only
(``recipes/default_model_crowd_small.yaml`` trains two pyramid levels): ``OLD.pt`` is exported and
quantised the same way, and every quantised tensor or range that comes out alike for both checkpoints
is taken from ``OLD.int8.onnx`` (the shipped copy) instead, so that the int8 outputs of what the
fine-tune left alone stay exactly as shipped; the rest (the changed layers' weights and the ranges of
the activations they feed) is the new export's::

    python tools/export_default_int8.py --weights runs/small/model.pt \
        --calibration-list .gpu/data512/train_faces.txt .gpu/data512/train_wider.txt \
        --keep-from srn/assets/srn_mobilenet_v2.pt srn/assets/srn_mobilenet_v2.int8.onnx --out new.int8.onnx
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
    parser.add_argument("--keep-from", type=Path, nargs=2, metavar=("OLD_PT", "OLD_INT8"),
                        help="keep OLD_INT8's quantised tensors wherever OLD_PT's export equals this one's")
    args = parser.parse_args(argv)
    for path in args.keep_from or ():
        if not path.is_file():
            print(f"export_default_int8: error: {path}: no such file", file=sys.stderr)
            return 2
    try:
        if args.calibration is not None:
            photos = select_calibration_images(args.calibration, args.count)
        else:
            photos = select_listed_images(args.calibration_list, args.count)
        with tempfile.TemporaryDirectory(prefix="srn_int8_") as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            export_checkpoint(args.weights, fp32)
            if args.keep_from is None:
                report = quantize_onnx(fp32, args.out, photos, input_size=args.size, activation_type="quint8")
            else:
                old_pt, old_int8 = args.keep_from
                new = Path(tmp) / "new.int8.onnx"
                report = quantize_onnx(fp32, new, photos, input_size=args.size, activation_type="quint8")
                export_checkpoint(old_pt, fp32)
                quantize_onnx(fp32, Path(tmp) / "old.int8.onnx", photos, input_size=args.size, activation_type="quint8")
                taken = keep_unchanged(old_int8, Path(tmp) / "old.int8.onnx", new, args.out)
                print(f"{taken} quantised tensors from {old_int8}, the others new", file=sys.stderr)
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


def keep_unchanged(shipped: Path, old_export: Path, new_export: Path, out: Path) -> int:
    """Write ``new_export`` to ``out`` with each initializer that ``old_export`` holds alike taken from
    ``shipped`` (the graphs must match node for node); returns how many were taken."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from srn.atomic import atomic_file

    models = {}
    for name, path in (("shipped", shipped), ("old", old_export), ("new", new_export)):
        try:
            models[name] = onnx.load(str(path))
        except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file
            raise SRNError(f"{path}: not an ONNX file ({type(exc).__name__})") from None
    layouts = {name: ([(n.op_type, list(n.input), list(n.output)) for n in m.graph.node], sorted((i.name, tuple(i.dims)) for i in m.graph.initializer))
               for name, m in models.items()}
    if not layouts["shipped"] == layouts["old"] == layouts["new"]:
        raise SRNError(f"{shipped}: its graph is not the one this export makes; the unchanged tensors cannot be kept from it")
    old = {i.name: numpy_helper.to_array(i) for i in models["old"].graph.initializer}
    shipped_tensors = {i.name: i for i in models["shipped"].graph.initializer}
    taken = 0
    for tensor in models["new"].graph.initializer:
        if np.array_equal(numpy_helper.to_array(tensor), old[tensor.name]):
            tensor.CopyFrom(shipped_tensors[tensor.name])
            taken += 1
    with atomic_file(out) as handle:
        handle.write(models["new"].SerializeToString())
    return taken


if __name__ == "__main__":
    sys.exit(main())
