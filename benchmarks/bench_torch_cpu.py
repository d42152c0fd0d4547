"""The PyTorch CPU path (``Detector(weights="x.pt", device="cpu")``): memory format and bf16, one run.

Variants of the network call, everything else (fitting, padding, post-processing in fp32) as the
Detector does it:

- ``fp32``: the model as loaded (NCHW), the Detector's fp32 path before this benchmark;
- ``fp32 channels_last``: the same weights and input in channels_last;
- ``fp32 folded channels_last``: BatchNorm folded into the convolutions, channels_last
  (:func:`srn.inference.runner.inference_copy` in fp32): what the Detector runs on the CPU now;
- ``bf16 autocast``: the NCHW model under ``torch.autocast("cpu", torch.bfloat16)``;
- ``bf16 autocast channels_last``: the same in channels_last;
- ``bf16 copy``: ``precision="bf16"``, the inference copy (BatchNorm folded, bf16 weights, channels_last).

On the astronaut and the first ``--photos`` held-out photos of ``tools/pack_faces.py``'s split, one
thread, batch 1: the median latency of ``Detector.detect`` on a decoded image (variants take turns
image by image, ``--rounds`` rounds), and the detections at the default threshold (0.5) against
``fp32``'s: faces matched at IoU 0.5, the largest box and score differences of matched faces.

    python benchmarks/bench_torch_cpu.py --data .gpu/data512 --photos 12 --rounds 3 --json /tmp/torch_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou

from srn import Detector
from srn.data.image_io import read_image
from srn.inference.runner import float_outputs, inference_copy

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "srn" / "assets" / "srn_mobilenet_v2.pt"
ASTRONAUT = ROOT / "docs" / "astronaut.png"
VARIANTS = ("fp32", "fp32 channels_last", "fp32 folded channels_last", "bf16 autocast", "bf16 autocast channels_last", "bf16 copy")


class Autocast(nn.Module):
    """The network under CPU bf16 autocast; outputs back in fp32 for decoding."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = self.model(images)
        return float_outputs(outputs)


def make_detector(variant: str) -> Detector:
    """A Detector on the checkpoint whose runner's network is ``variant``'s (the Detector's own
    CPU choice since this benchmark is ``fp32 folded channels_last``)."""
    detector = Detector(WEIGHTS, device="cpu", batch_size=1, precision="bf16" if variant == "bf16 copy" else "fp32")
    if variant == "bf16 copy":
        return detector
    runner = detector.backend.runner(detector.score_thresh)
    model = copy.deepcopy(detector.model).eval()
    channels_last = variant.endswith("channels_last")
    if variant == "fp32 folded channels_last":
        net: nn.Module = inference_copy(model, torch.float32)
    else:
        net = model.to(memory_format=torch.channels_last) if channels_last else model
        if variant.startswith("bf16 autocast"):
            net = Autocast(net)
    runner.net = net
    runner.optimised = channels_last  # the runner makes its input channels_last when optimised
    return detector


def compare(reference, faces) -> dict[str, float]:
    matched, box_diff, score_diff = 0, 0.0, 0.0
    if len(reference) and len(faces):
        iou = box_iou(reference.boxes, faces.boxes)
        best, index = iou.max(dim=1)
        for i, (value, j) in enumerate(zip(best.tolist(), index.tolist())):
            if value >= 0.5:
                matched += 1
                box_diff = max(box_diff, float((reference.boxes[i] - faces.boxes[j]).abs().max()))
                score_diff = max(score_diff, abs(float(reference.scores[i]) - float(faces.scores[j])))
    return {"reference_faces": len(reference), "faces": len(faces), "matched": matched, "max_box_diff_px": box_diff,
            "max_score_diff": score_diff}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / ".gpu" / "data512")
    parser.add_argument("--photos", type=int, default=12, help="held-out photos besides the astronaut")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    paths = [ASTRONAUT]
    listing = args.data / "val_faces.txt"
    if listing.is_file():
        lines = [line for line in listing.read_text().splitlines() if line.endswith(".jpg")]
        step = max(1, len(lines) // max(1, args.photos))
        paths += [args.data / line for line in lines[::step][: args.photos]]
    images = [read_image(p) for p in paths]
    detectors = {name: make_detector(name) for name in VARIANTS}
    for detector in detectors.values():  # warm-up: oneDNN primitives, anchor caches
        detector.detect(images[0])
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    found: dict[str, list] = {name: [] for name in VARIANTS}
    load_start = os.getloadavg()[0]
    for turn in range(args.rounds):
        for index, image in enumerate(images):
            order = VARIANTS[index % len(VARIANTS):] + VARIANTS[: index % len(VARIANTS)]
            for name in order:
                start = time.perf_counter()
                faces = detectors[name].detect(image)
                seconds[name].append(time.perf_counter() - start)
                if turn == 0:
                    found[name].append(faces)
    rows = []
    base = float(np.median(seconds["fp32"]))
    for name in VARIANTS:
        median = float(np.median(seconds[name]))
        checks = [compare(a, b) for a, b in zip(found["fp32"], found[name])]
        rows.append({
            "variant": name,
            "median_ms": median * 1000,
            "x_fp32": median / base,
            "faces": sum(c["faces"] for c in checks),
            "fp32_faces": sum(c["reference_faces"] for c in checks),
            "matched": sum(c["matched"] for c in checks),
            "max_box_diff_px": max(c["max_box_diff_px"] for c in checks),
            "max_score_diff": max(c["max_score_diff"] for c in checks),
        })
    print("| variant | median ms/img | x fp32 | faces (fp32's) | matched at IoU 0.5 | max box diff px | max score diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['median_ms']:.1f} | {r['x_fp32']:.2f} | {r['faces']} ({r['fp32_faces']}) | {r['matched']} "
              f"| {r['max_box_diff_px']:.3f} | {r['max_score_diff']:.4f} |")
    if args.json:
        report = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join(["python", *(sys.argv if argv is None else ["benchmarks/bench_torch_cpu.py", *argv])]),
            "torch": torch.__version__,
            "images": [str(p) for p in paths],
            "rounds": args.rounds,
            "load_average_1min": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
            "rows": rows,
        }
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
