"""What the canonical padding costs and gives: the CPU default (the shipped int8 model) with each
image padded to a multiple of 32 (the backbone's output stride: the Detector's rule), of 128 (the
coarsest level's stride), or not at all (its own size, as one image per batch ran before batch
invariance), on the held-out split, one run.

Rounding up to a multiple of 32 is what the Detector does; the other two rows replace
``Detector.padded_size`` on an instance (a multiple of 128 is also batch-invariant; no padding is
not, once images share a batch). For each: WIDER AP (subset mode) and photo AP as
``benchmarks/bench_peers.py`` scores them (score threshold 0.02), and the median latency of
``Detector.detect`` on the decoded held-out photos at the default threshold, one thread; the three
take turns image by image.

    python experiments/bench_padding.py --data .gpu/data512 --shared ../shared --json /tmp/padding.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_peers  # noqa: E402  (HeldOut, decoding, latency summary)

from srn import Detector  # noqa: E402

RULES = ("multiple of 32 (Detector)", "multiple of 128", "none")


def make(rule: str, score_thresh: float) -> Detector:
    detector = Detector(device="cpu", threads=1, batch_size=1, score_thresh=score_thresh)
    if rule == "multiple of 128":
        detector.padded_size = lambda h, w: (-(-h // 128) * 128, -(-w // 128) * 128)
    elif rule == "none":
        detector.padded_size = lambda h, w: (h, w)
    return detector


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(".gpu/data512"))
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--ap-thresh", type=float, default=0.02)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    held_out = bench_peers.HeldOut(args.data, args.shared)
    load = {"start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="bench_padding_") as tmp:
        decoded = [np.load(p) for p in bench_peers.decode_all(held_out.wider_paths + held_out.photo_paths, Path(tmp))]
    photos = decoded[len(held_out.wider_paths):]
    ap_detectors = {rule: make(rule, args.ap_thresh) for rule in RULES}
    found = {rule: [] for rule in RULES}
    for image in decoded:
        for rule in RULES:
            faces = ap_detectors[rule].detect(image)
            found[rule].append((faces.boxes.double().numpy(), faces.scores.double().numpy()))
    detectors = {rule: make(rule, 0.5) for rule in RULES}
    seconds = {rule: [] for rule in RULES}
    for index, image in enumerate(photos):
        for k in range(len(RULES)):
            rule = RULES[(index + k) % len(RULES)]
            start = time.perf_counter()
            detectors[rule].detect(image)
            seconds[rule].append(time.perf_counter() - start)
    load["end"] = round(os.getloadavg()[0], 2)
    rows = []
    print("| padding | WIDER Easy | WIDER Medium | WIDER Hard | photo AP@0.5 | median ms/img | x multiple of 32 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = float(np.median(seconds[RULES[0]])) * 1000
    for rule in RULES:
        scores = held_out.score(found[rule])
        wider = {k: float(v) for k, v in scores["wider"]["ap"].items()}
        latency = bench_peers.latency_summary(seconds[rule])
        rows.append({"padding": rule, "wider_ap": wider, "photo_ap": float(scores["photos"]["ap"]), "latency": latency})
        print(f"| {rule} | {wider['easy']:.4f} | {wider['medium']:.4f} | {wider['hard']:.4f} | {rows[-1]['photo_ap']:.4f} "
              f"| {latency['median_ms']:.1f} | {latency['median_ms'] / base:.2f} |")
    if args.json:
        bench_peers.write_json(args.json, {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join(["python", *(sys.argv if argv is None else ["experiments/bench_padding.py", *argv])]),
            "machine": bench_peers.machine_description(),
            "load_average_1min": load,
            "rows": rows,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
