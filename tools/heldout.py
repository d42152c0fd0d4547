"""The held-out protocol that decides whether a model ships (docs/shipping.md).

On the fixed split of ``tools/pack_faces.py`` (never trained on), every model runs as ``srn detect``
runs it (``srn.Detector`` at its defaults: native resolution, shrunk only past 2100 px), with a low
score threshold so that AP sees the whole curve. Three sources are scored apart, because a split
pooled over them is dominated by large portrait faces and hides a small-face regression:

- ``crowd``: the held-out photos of ``kaggle_face_mask_853`` and ``jolignier_face_mask_ilc2021``
  (crowds and street photos, many faces under 32 px);
- ``wider``: the 30 held-out WIDER FACE val images, scored by the official protocol in subset mode
  (Easy / Medium / Hard, in the original WIDER coordinates) and, like the others, per face size
  against their labels;
- ``portraits``: ``macwinwin_face_mask_498`` and the two grayscale ``roboflow`` sets (mostly one
  large face).

Per source and per face size (shorter side ``< 16``, ``16-32``, ``32-64``, ``>= 64`` px, in the pixels
the model is given): AP at IoU 0.5 and recall at the shipped thresholds (0.3, ``srn detect``; 0.1,
``srn anonymize``), by :func:`srn.evaluation.sizes.score_by_size`. The photos are partially labelled,
so their AP is a lower bound (an unlabelled face found is a false positive).

**The rule** (:func:`verdict`): a candidate ships only if no source and no size bin loses more than
0.01 of AP or of recall at a shipped threshold against the shipped model, no WIDER setting loses
more than 0.01, and the crowd AP gains.

    python tools/heldout.py --data .gpu/data512 --shared ../shared --weights runs/x/model.pt \\
        --json benchmarks/results/heldout_x.json

compares ``--weights`` with ``--reference`` (default: the shipped int8 file, what ``srn detect`` runs
on a CPU) and prints both tables and the verdict.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

from srn.data.formats import parse_wider_file  # noqa: E402
from srn.errors import SRNError  # noqa: E402
from srn.evaluation import widerface  # noqa: E402
from srn.evaluation.sizes import score_by_size  # noqa: E402

SOURCES: dict[str, tuple[str, ...]] = {
    "crowd": ("kaggle_face_mask_853", "jolignier_face_mask_ilc2021"),
    "wider": (),
    "portraits": ("macwinwin_face_mask_498", "roboflow_face_detection_mik1i_ece342", "roboflow_face_detection_mgde2"),
}
# The shipped operating points: srn detect's and srn anonymize's default score thresholds.
THRESHOLDS = (0.3, 0.1)
TOLERANCE = 0.01
AP_THRESH = 0.001  # the score threshold of the AP pass
PACK_COMMAND = "python tools/pack_faces.py --shared ../shared --out {data} --side 512 --quality 90 --wider-side 1024"

Detections = list[tuple[np.ndarray, np.ndarray]]  # per image: boxes (K, 4) x1 y1 x2 y2, scores (K,)


def wider_prediction(boxes: np.ndarray, scores: np.ndarray, scale: float) -> np.ndarray:
    """Boxes found on a packed WIDER image -> ``(K, 5)`` x y w h score in the original image
    (``scale``: original width / packed width)."""
    xyxy = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale
    return np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2], np.asarray(scores, dtype=np.float64).reshape(-1, 1)], axis=1)


class HeldOut:
    """The held-out images of every source, their labels and the WIDER ground truth.

    ``paths`` lists every image once, WIDER first, then each photo source in :data:`SOURCES`
    order; :meth:`score` takes detections in that order.
    """

    def __init__(self, data: Path, shared: Path, limit: int | None = None) -> None:
        lists = {"wider": [data / "val_wider.txt"]}
        for source, names in SOURCES.items():
            if names:
                lists[source] = [data / f"val_faces_{name}.txt" for name in names]
        missing = [str(p) for files in lists.values() for p in files if not p.is_file()]
        if missing:
            raise SystemExit(f"missing {', '.join(missing)}: run {PACK_COMMAND.format(data=data)}")
        self.records = {source: [r for p in files for r in parse_wider_file(p)[:limit]] for source, files in lists.items()}
        self.order = ["wider", *[s for s in SOURCES if s != "wider"]]
        self.paths = [data / r.image_path for source in self.order for r in self.records[source]]
        original = {Path(r.image_path).name: r for r in parse_wider_file(shared / "data/widerface/val_subset/labels_original.txt")}
        self.wider_keys, self.wider_scales = [], []
        for record in self.records["wider"]:
            first = original[Path(record.image_path).name]
            event, name = first.image_path.split("/")
            self.wider_keys.append((event, Path(name).stem))
            with Image.open(data / record.image_path) as im:
                self.wider_scales.append(first.image_size[1] / im.width)
        self.gt = widerface.load_wider_gt(shared / "data/widerface/eval_gt")

    def split(self, detections: Sequence[Any]) -> dict[str, list[Any]]:
        """Detections in :attr:`paths` order -> per source."""
        if len(detections) != len(self.paths):
            raise ValueError(f"{len(detections)} detections for {len(self.paths)} images")
        out, start = {}, 0
        for source in self.order:
            n = len(self.records[source])
            out[source] = list(detections[start : start + n])
            start += n
        return out

    def score(self, detections: Detections) -> dict[str, Any]:
        """Per source: AP and recall overall and per size; for ``wider`` also the official protocol."""
        report: dict[str, Any] = {}
        for source, found in self.split(detections).items():
            labels = [r.boxes.double() for r in self.records[source]]
            report[source] = score_by_size(found, labels, THRESHOLDS)
            report[source]["images"] = len(labels)
        predictions = {key: wider_prediction(b, s, scale) for key, (b, s), scale in zip(self.wider_keys, self.split(detections)["wider"], self.wider_scales)}
        official = widerface.evaluate(predictions, self.gt, subset=True)
        report["wider"]["official"] = {k: float(v) for k, v in official.to_dict(curves=False)["ap"].items()}
        return report


def metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """Every number the rule compares, flat: ``"crowd <16 ap"``, ``"wider hard"``..."""
    flat: dict[str, float] = {}
    for source in SOURCES:
        for bin_name, values in report[source].items():
            if not isinstance(values, Mapping) or "ap" not in values:
                continue
            flat[f"{source} {bin_name} ap"] = values["ap"]
            for t, r in values["recall"].items():
                flat[f"{source} {bin_name} recall@{t}"] = r
    for setting, ap in report["wider"]["official"].items():
        flat[f"wider {setting}"] = ap
    return flat


def verdict(candidate: Mapping[str, Any], reference: Mapping[str, Any], tolerance: float = TOLERANCE) -> tuple[bool, list[str]]:
    """The shipping rule: ``(ships, reasons it does not)``."""
    new, old = metrics(candidate), metrics(reference)
    reasons = []
    for key, before in old.items():
        after = new.get(key, math.nan)
        if math.isnan(before):
            continue
        if math.isnan(after) or after < before - tolerance:
            reasons.append(f"{key}: {before:.4f} -> {after:.4f}")
    if not new["crowd all ap"] > old["crowd all ap"]:
        reasons.append(f"crowd all ap does not gain: {old['crowd all ap']:.4f} -> {new['crowd all ap']:.4f}")
    return not reasons, reasons


def format_report(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """One markdown table: a row per model and source, AP (recall at 0.3) per size bin."""
    bins = [k for k, v in rows[0][1]["crowd"].items() if isinstance(v, Mapping)]
    lines = [
        "| model | source | " + " | ".join(f"{b} AP (R@0.3) [faces]" for b in bins) + " | WIDER E / M / H |",
        "|---|---|" + "---:|" * (len(bins) + 1),
    ]
    for name, report in rows:
        for source in SOURCES:
            cells = []
            for b in bins:
                v = report[source][b]
                cells.append(f"{v['ap']:.3f} ({v['recall']['0.3']:.3f}) [{v['faces']}]" if v["faces"] else "-")
            official = report["wider"]["official"]
            wider = " / ".join(f"{official[s]:.3f}" for s in ("easy", "medium", "hard")) if source == "wider" else ""
            lines.append(f"| {name} | {source} | " + " | ".join(cells) + f" | {wider} |")
    return "\n".join(lines) + "\n"


def detect_all(weights: str | None, paths: Sequence[Path], threads: int, exact_int8: bool | None = None,
               **options: Any) -> Detections:
    """Boxes and scores of every image through ``srn.Detector`` (defaults but the score threshold);
    ``exact_int8``: the Detector's option for ``.onnx`` int8 files."""
    from srn import Detector


    detector = Detector(weights=weights, device="cpu", threads=threads, score_thresh=AP_THRESH, batch_size=1,
                        exact_int8=exact_int8, **options)
    found = []
    for path in paths:
        with Image.open(path) as im:
            faces = detector.detect(np.asarray(im.convert("RGB")))
        found.append((faces.boxes.double().numpy(), faces.scores.double().numpy()))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(".gpu/data512"))
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--weights", nargs="+", required=True, help="candidate models (.pt or .onnx)")
    parser.add_argument("--reference", help="the shipped model (default: the shipped int8 file, or the reference of --reference-from)")
    parser.add_argument("--min-sizes", type=int, nargs="*", default=[0],
                        help="run each candidate once per value: the Detector's min_size, a test-time scale policy (0: none; no value: only the --zoom-passes)")
    parser.add_argument("--zoom-passes", nargs="+", default=[], metavar="SIZE:MAX_FACE[:WHEN]",
                        help="also run each candidate with a second upscaled pass (srn.ZoomPass), once per value")
    parser.add_argument("--reference-from", type=Path,
                        help="take the shipped model's report from this earlier --json of the same data, instead of running it")
    parser.add_argument("--int8-as-stored", action="store_true",
                        help="run .onnx files as stored, also where this CPU's int8 kernel clips (srn/inference/int8_kernels.py)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, help="smoke test: the first N images of each list (not a result)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    held_out = HeldOut(args.data, args.shared, args.limit)
    from srn import ZoomPass

    rows = []
    runs: list[tuple[str, str, dict[str, Any]]] = []
    if args.reference_from is not None:
        # The earlier report's reference is the model compared against: it names the row.
        try:
            earlier = json.loads(args.reference_from.read_text())
            reference_report = earlier["models"][earlier["reference"]]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            parser.error(f"{args.reference_from}: cannot be read as a report of tools/heldout.py --json ({type(exc).__name__}: {exc})")
        if args.reference not in (None, earlier["reference"]):
            parser.error(f"{args.reference_from} holds the report of {earlier['reference']}, not of --reference {args.reference}")
        args.reference = earlier["reference"]
        rows.append((args.reference, reference_report))
    else:
        args.reference = args.reference or str(ROOT / "srn/assets/srn_mobilenet_v2.int8.onnx")
        runs.append((args.reference, "", {}))
    for weights in args.weights:
        runs += [(weights, f" min_size {m}" if m else "", {"min_size": m or None}) for m in args.min_sizes]
        for spec in args.zoom_passes:
            size, max_face, *when = spec.split(":")
            zoom = ZoomPass(int(size), float(max_face), float(when[0]) if when else None)
            runs.append((weights, f" zoom {spec}", {"zoom_pass": zoom}))
    failed: list[str] = []
    for weights, suffix, options in runs:
        name = weights + suffix + (" as stored" if args.int8_as_stored and weights.endswith(".onnx") else "")
        if name in {row_name for row_name, _ in rows}:  # the reference run again: keep both rows
            name += " (again)"
        print(f"{name}: {len(held_out.paths)} images", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            found = detect_all(weights, held_out.paths, args.threads, exact_int8=False if args.int8_as_stored else None, **options)
        except SRNError as exc:
            if not rows:  # the reference: nothing to compare the others with
                print(f"heldout.py: error: {exc}", file=sys.stderr)
                return 2
            print(f"heldout.py: error: {exc}; {name} skipped", file=sys.stderr)
            failed.append(name)
            continue
        report = held_out.score(found)
        report["seconds_per_image"] = (time.perf_counter() - start) / max(1, len(held_out.paths))
        rows.append((name, report))
    reference = rows[0][1]
    verdicts = {name: verdict(report, reference) for name, report in rows[1:]}
    print(format_report([(n.rsplit("/", 1)[-1], r) for n, r in rows]), end="")
    for name, (ships, reasons) in verdicts.items():
        print(f"{name}: {'ships' if ships else 'does not ship'}" + "".join(f"\n  {r}" for r in reasons))
    if args.json:
        from srn.inference.int8_kernels import u8s8_saturates

        report = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join(["python", "tools/heldout.py", *(sys.argv[1:] if argv is None else argv)]),
            "reference": args.reference,
            # Whether onnxruntime's U8S8 kernel clips on this CPU (no VNNI), and so whether .onnx int8
            # files ran re-encoded (exact) or, with --int8-as-stored, as stored.
            "int8_kernel_clips": u8s8_saturates(),
            "int8_as_stored": args.int8_as_stored,
            "models": {name: report for name, report in rows},
            "verdicts": {name: {"ships": ships, "reasons": reasons} for name, (ships, reasons) in verdicts.items()},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(json.dumps(report, indent=1, default=float) + "\n")
        os.replace(tmp, args.json)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
