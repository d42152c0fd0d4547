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
the activations they feed) is the new export's. A fine-tune that added residual blocks (adapters or
context blocks, ``model.adapter_levels`` and ``model.context_levels``, zero at the start) is compared with
``OLD.pt`` in its own architecture (the blocks at the identity); the blocks' tensors, and the ranges of the
activations they change, are the new export's::

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

from srn.errors import SRNError, TrainingError
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
    parser.add_argument("--reduce-range", action="store_true",
                        help="7-bit weights, which no int8 kernel clips (less accurate: docs/export.md, 'Every CPU, one answer')")
    parser.add_argument("--out", type=Path, default=ROOT / "srn/assets/srn_mobilenet_v2.int8.onnx")
    parser.add_argument("--keep-from", type=Path, nargs=2, metavar=("OLD_PT", "OLD_INT8"),
                        help="keep OLD_INT8's quantised tensors wherever OLD_PT's export equals this one's")
    args = parser.parse_args(argv)
    if args.reduce_range and args.keep_from:
        parser.error("--reduce-range re-quantises every weight: there is nothing to keep from 8-bit files (--keep-from)")
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
                report = quantize_onnx(fp32, args.out, photos, input_size=args.size, activation_type="quint8", reduce_range=args.reduce_range)
            else:
                old_pt, old_int8 = args.keep_from
                new = Path(tmp) / "new.int8.onnx"
                report = quantize_onnx(fp32, new, photos, input_size=args.size, activation_type="quint8", reduce_range=args.reduce_range)
                export_checkpoint(in_architecture_of(old_pt, args.weights, Path(tmp) / "old.pt"), fp32)
                quantize_onnx(fp32, Path(tmp) / "old.int8.onnx", photos, input_size=args.size, activation_type="quint8", reduce_range=args.reduce_range)
                taken = keep_unchanged(old_int8, Path(tmp) / "old.int8.onnx", new, args.out)
                print(f"{taken} uses of quantised tensors from {old_int8}, the others new", file=sys.stderr)
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
          f"{report.calibration_images} photos at {report.input_size} px, {args.out.stat().st_size} bytes, sha256 {digest}")
    return 0


def in_architecture_of(old: Path, new: Path, out: Path) -> Path:
    """Write ``old``'s weights in ``new``'s architecture to ``out``: the same model, but with the
    residual blocks ``new`` added at the identity (adapters or context blocks, the only difference allowed)."""
    from dataclasses import replace

    from srn.engine.checkpoint import init_from
    from srn.model import SRN
    from srn.weights import read_weights, save_checkpoint

    old_config, _ = read_weights(old)
    new_config, _ = read_weights(new)
    model = SRN.from_config(replace(new_config.model, pretrained=None))
    try:
        init_from(model, old)
    except TrainingError:
        raise SRNError(f"{old}: not the model of {new} (only new residual blocks may differ); the unchanged tensors "
                       "cannot be kept from it") from None
    save_checkpoint(model.eval(), replace(old_config, model=new_config.model), out)
    return out


def _sites(graph) -> dict[tuple[int, int], str]:
    """Where each quantised initializer is used, keyed by ``(node index, input index)``, named by what does not
    depend on the exporter's numbering (initializers are named ``onnx::Conv_1433``, deduplicated alike
    values share one name, and both change when layers are added): a weight, bias or constant by the
    output of the layer that uses it (through its DequantizeLinear); a range by the activation it
    quantises. Returns {(node, input): site name}."""
    initializers = {i.name for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    users: dict[str, list[tuple[object, int]]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            users.setdefault(name, []).append((node, index))
    sites = {}
    for n, node in enumerate(graph.node):
        for index, name in enumerate(node.input):
            if name not in initializers:
                continue
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[0] not in initializers:
                activation = node.input[0]
                if node.op_type == "DequantizeLinear" and activation in producer and producer[activation].op_type == "QuantizeLinear":
                    activation = producer[activation].input[0]
                site = f"range of {activation}"
            elif node.op_type == "DequantizeLinear":  # a quantised weight or bias: named by its layers
                site = "tensor of " + ",".join(sorted(f"{user.output[0]}#{j}" for user, j in users.get(node.output[0], [])))
            else:  # not quantised (a shape, say): the new export's
                continue
            sites[n, index] = f"{site} /{index}"
    return sites


def keep_unchanged(shipped: Path, old_export: Path, new_export: Path, out: Path) -> int:
    """Write ``new_export`` to ``out`` with each initializer that ``old_export`` holds alike taken from
    ``shipped``, matched by where it is used (:func:`_sites`), not by name; returns how many uses were
    taken. Every use in ``shipped`` must be one in ``old_export``, of the same shape (which may have
    more: new layers)."""
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
    sites = {name: _sites(model.graph) for name, model in models.items()}
    values = {}
    for name in ("shipped", "old"):
        graph = models[name].graph
        tensors = {i.name: i for i in graph.initializer}
        values[name] = {site: tensors[graph.node[n].input[i]] for (n, i), site in sites[name].items()}
    new_sites = sites["new"]
    shapes = {name: {(site, tuple(tensor.dims)) for site, tensor in used.items()} for name, used in values.items()}
    if not shapes["shipped"] <= shapes["old"]:
        raise SRNError(f"{shipped}: its graph is not the one this export makes; the unchanged tensors cannot be kept from it")
    graph = models["new"].graph
    own = {i.name: i for i in graph.initializer}
    added: dict[str, str] = {}
    taken = 0
    for (n, i), site in new_sites.items():
        kept, old = values["shipped"].get(site), values["old"].get(site)
        if kept is None or old is None or not np.array_equal(numpy_helper.to_array(own[graph.node[n].input[i]]), numpy_helper.to_array(old)):
            continue
        if kept.name not in added:
            added[kept.name] = f"kept:{kept.name}"
            copy = graph.initializer.add()
            copy.CopyFrom(kept)
            copy.name = added[kept.name]
        graph.node[n].input[i] = added[kept.name]
        taken += 1
    used = {name for node in graph.node for name in node.input}
    unused = [i for i in graph.initializer if i.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)
    with atomic_file(out) as handle:
        handle.write(models["new"].SerializeToString())
    return taken


if __name__ == "__main__":
    sys.exit(main())
