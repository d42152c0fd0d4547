"""fp32 ONNX against static int8 ONNX (srn.export.quantize) on the held-out split, in one run.

For the model (``--weights``, default the shipped ``srn/assets/srn_mobilenet_v2.pt``) it exports a
raw-layout fp32 ONNX file, quantises it (QDQ, per-channel int8 weights, 8-bit activations of each
``--activations`` type) on calibration photos, and measures every file on the split that
``tools/pack_faces.py`` writes:

- WIDER FACE AP (Easy / Medium / Hard), official protocol in **subset mode** on the 30 held-out
  WIDER images, and photo AP (VOC AP at IoU 0.5 on the 452 held-out photos), scored as
  ``tools/eval_default_model.py`` scores them, through ``benchmarks/bench_peers.py``'s ``HeldOut``,
  with its settings (score threshold ``--ap-thresh`` 0.02, PIL decoding), so the fp32 row is
  comparable with the published peers table;
- CPU latency with ``--threads`` onnxruntime threads (1 for the published numbers): the median over
  the held-out photos of the wall time of ``Detector.detect`` on an already decoded image
  (pre-processing + network + post-processing), at the Detector's default threshold. The models take
  turns on runs of ``--chunk`` photos, so that other work on a shared machine slows them all alike.

Calibration photos never come from the held-out split: by default a deterministic sample
(:func:`srn.export.quantize.select_calibration_images`, evenly spaced over the sorted files) of the
training split's images listed in ``DATA/train_faces.txt`` and ``DATA/train_wider.txt``; or any folder
given with ``--calibration`` (checked for held-out images all the same).

    python tools/pack_faces.py --shared ../shared --out .gpu/data512 --side 512 --quality 90 --wider-side 1024
    python benchmarks/bench_int8.py --data .gpu/data512 --shared ../shared --threads 1 \\
        --activations quint8 qint8 --json benchmarks/results/int8_results.json

``--limit 5`` makes a dry run on the first images of each list (not a result).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_peers  # noqa: E402  (HeldOut, decoding, latency summary, JSON writing)

from srn.data.datasets import parse_wider_file  # noqa: E402
from srn.export.onnx import export_checkpoint  # noqa: E402
from srn.export.quantize import (  # noqa: E402
    ACTIVATION_TYPES,
    DEFAULT_CALIBRATION_COUNT,
    DEFAULT_CALIBRATION_SIZE,
    quantize_onnx,
    select_calibration_images,
)
from srn.inference import Detector  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = ROOT / "srn" / "assets" / "srn_mobilenet_v2.pt"
MAX_SIZE = bench_peers.MAX_SIZE


def training_calibration_folder(data: Path, folder: Path) -> Path:
    """``folder`` filled with links to the training split's images (``train_faces.txt`` and
    ``train_wider.txt`` of ``data``), under their paths relative to ``data/images``, so that
    :func:`select_calibration_images` samples them as it samples any user's folder."""
    lists = [data / "train_faces.txt", data / "train_wider.txt"]
    missing = [str(p) for p in lists if not p.is_file()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run tools/pack_faces.py (see this script's docstring)")
    for listing in lists:
        for record in parse_wider_file(listing):
            source = (data / record.image_path).resolve()
            link = folder / Path(record.image_path).relative_to("images")
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(source)
    return folder


def check_disjoint(calibration: Sequence[Path], held_out: bench_peers.HeldOut) -> None:
    """Stop if a calibration photo is one of the held-out images (compared after resolving links)."""
    evaluated = {p.resolve() for p in held_out.wider_paths + held_out.photo_paths}
    overlap = [str(p) for p in calibration if p.resolve() in evaluated]
    if overlap:
        raise SystemExit(f"{len(overlap)} calibration photo(s) are held-out images, e.g. {overlap[0]}: calibrate on other photos")


class OnnxModel:
    """One ONNX file run by :class:`Detector` (onnxruntime, ``threads`` threads), on decoded images."""

    def __init__(self, name: str, path: Path, threads: int) -> None:
        self.name, self.path, self.threads = name, path, threads
        self._detectors: dict[float | None, Detector] = {}

    def detector(self, score_thresh: float | None) -> Detector:
        if score_thresh not in self._detectors:
            options = {} if score_thresh is None else {"score_thresh": score_thresh}
            self._detectors[score_thresh] = Detector(self.path, device="cpu", threads=self.threads, max_size=MAX_SIZE, batch_size=1, **options)
        return self._detectors[score_thresh]

    def run(self, images: Sequence[Path], score_thresh: float | None) -> tuple[bench_peers.Detections, list[float]]:
        """Detections (boxes, scores as float64 numpy) and the seconds of each ``detect`` call."""
        detector = self.detector(score_thresh)
        results, seconds = [], []
        for path in images:
            image = np.load(path)
            start = time.perf_counter()
            faces = detector.detect(image)
            seconds.append(time.perf_counter() - start)
            results.append((faces.boxes.double().numpy(), faces.scores.double().numpy()))
        return results, seconds


def summary_line(row: dict[str, Any]) -> str:
    wider = row["wider_ap"]
    return (f"{row['name']}: WIDER {wider['easy']:.4f}/{wider['medium']:.4f}/{wider['hard']:.4f}, photos {row['photo_ap']:.4f}, "
            f"{row['latency']['median_ms']:.1f} ms/img, {row['file_bytes'] / 2**20:.1f} MiB")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="srn checkpoint (default: the shipped model)")
    parser.add_argument("--data", type=Path, default=Path(".gpu/data512"), help="tools/pack_faces.py's output")
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--calibration", type=Path, help="folder of calibration photos (default: the training split of --data)")
    parser.add_argument("--calibration-count", type=int, default=DEFAULT_CALIBRATION_COUNT, help="photos sampled for calibration")
    parser.add_argument("--calibration-size", type=int, default=DEFAULT_CALIBRATION_SIZE, help="calibration input side, pixels")
    parser.add_argument("--activations", nargs="+", choices=ACTIVATION_TYPES, default=["quint8"], help="int8 variants to build and measure")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads within an op (1 for the published numbers)")
    parser.add_argument("--ap-thresh", type=float, default=0.02, help="score threshold of the AP pass (bench_peers.py's)")
    parser.add_argument("--latency-images", type=int, default=None, help="time only the first N held-out photos (default: all)")
    parser.add_argument("--limit", type=int, default=None, help="dry run: only the first N images of each held-out list (not a result)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed images per model before the latency pass")
    parser.add_argument("--chunk", type=int, default=8, help="images per turn of a model in the latency pass")
    parser.add_argument("--keep", type=Path, help="keep the fp32 and int8 ONNX files in this folder")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/int8_results.json"))
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")

    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)  # the Detector's post-processing runs in torch
    held_out = bench_peers.HeldOut(args.data, args.shared, args.limit)
    started = time.time()
    load: dict[str, float] = {"start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="bench_int8_") as tmp_name:
        tmp = Path(tmp_name)
        models_dir = args.keep or tmp / "models"
        models_dir.mkdir(parents=True, exist_ok=True)
        fp32_path = models_dir / f"{args.weights.stem}.onnx"
        export_checkpoint(args.weights, fp32_path)

        folder = args.calibration or training_calibration_folder(args.data, tmp / "calibration")
        calibration = select_calibration_images(folder, args.calibration_count)
        check_disjoint(calibration, held_out)
        models = [OnnxModel("fp32", fp32_path, args.threads)]
        quantization: dict[str, Any] = {}
        for activation in args.activations:
            int8_path = models_dir / f"{args.weights.stem}.int8_{activation}.onnx"
            t0 = time.time()
            report = quantize_onnx(fp32_path, int8_path, calibration, input_size=args.calibration_size, activation_type=activation)
            quantization[activation] = {
                "seconds": round(time.time() - t0, 1),
                "calibration_images": report.calibration_images,
                "skipped": [f"{p}: {r}" for p, r in report.skipped],
                "input_size": report.input_size,
                "calibrate_method": report.calibrate_method,
                "int8_bytes": report.int8_bytes,
            }
            print(f"quantised ({activation}) on {report.calibration_images} photos in {quantization[activation]['seconds']} s", file=sys.stderr)
            models.append(OnnxModel(f"int8 ({activation} activations)", int8_path, args.threads))

        print(f"decoding {len(held_out.wider_paths)} WIDER images and {len(held_out.photo_paths)} photos", file=sys.stderr)
        decoded = bench_peers.decode_all(held_out.wider_paths + held_out.photo_paths, tmp / "images")
        latency_images = decoded[len(held_out.wider_paths) :][: args.latency_images]

        found = []
        for model in models:
            t0 = time.time()
            found.append(model.run(decoded, args.ap_thresh)[0])
            print(f"AP pass {model.name}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        load["after_ap"] = round(os.getloadavg()[0], 2)

        seconds: list[list[float]] = [[] for _ in models]
        for model in models:
            model.run(latency_images[: args.warmup], None)
        for turn, chunk in enumerate(bench_peers.chunks(latency_images, args.chunk)):
            for k in range(len(models)):
                index = (turn + k) % len(models)
                seconds[index] += models[index].run(chunk, None)[1]
        load["end"] = round(os.getloadavg()[0], 2)

        rows = []
        for model, detections, times in zip(models, found, seconds):
            scores = held_out.score(detections)
            rows.append({
                "name": model.name,
                "file": str(model.path) if args.keep else model.path.name,
                "file_bytes": model.path.stat().st_size,
                "wider_ap": {k: float(v) for k, v in scores["wider"]["ap"].items()},
                "photo_ap": float(scores["photos"]["ap"]),
                "latency": bench_peers.latency_summary(times),
                "wider_eval": scores["wider"],
                "photos_eval": scores["photos"],
            })
    for row in rows[1:]:
        row["speedup_vs_fp32"] = rows[0]["latency"]["median_ms"] / row["latency"]["median_ms"]
        row["ap_change_vs_fp32"] = {
            **{k: row["wider_ap"][k] - rows[0]["wider_ap"][k] for k in row["wider_ap"]},
            "photos": row["photo_ap"] - rows[0]["photo_ap"],
        }
    for row in rows:
        print(summary_line(row), file=sys.stderr)

    report_json = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", *(sys.argv if argv is None else ["benchmarks/bench_int8.py", *argv])]),
        "machine": bench_peers.machine_description(),
        "versions": {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__},
        "settings": {
            "weights": str(args.weights),
            "data": str(args.data),
            "threads": args.threads,
            "ap_thresh": args.ap_thresh,
            "max_size": MAX_SIZE,
            "latency_images": len(latency_images),
            "limit": args.limit,
            "warmup": args.warmup,
            "latency_turns": f"models take turns on runs of {args.chunk} images",
            "load_average_1min": load,
            "decode": "PIL, once, excluded from latency",
            "wider": "official protocol, subset mode (held-out images only), original WIDER coordinates",
            "photos": "VOC AP at IoU 0.5, partially labelled (lower bound)",
        },
        "calibration": {
            "folder": str(args.calibration) if args.calibration else f"training split of {args.data} (train_faces.txt, train_wider.txt)",
            "count": len(calibration),
            "images": [str(p.relative_to(folder)) for p in calibration],
            "size": args.calibration_size,
        },
        "quantization": quantization,
        "seconds": round(time.time() - started, 1),
        "models": rows,
    }
    bench_peers.write_json(args.json, report_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
