"""Wall time of the WIDER FACE evaluator on the reference submission against the full val set.

Times the three stages separately (ground truth, reading 3,160 prediction files, evaluation) and
prints the three APs next to the official MATLAB values from ``reference/wider_eval_case1``.
``--boxes-per-image N`` adds N jittered copies of each box per image first, to time a submission
the size of a real detector's (SRN writes up to 750 boxes per image).

    python benchmarks/bench_wider_eval.py
    python benchmarks/bench_wider_eval.py --boxes-per-image 750 --repeat 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from srn.evaluation.widerface import evaluate, format_table, load_wider_gt, read_predictions  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
OFFICIAL = {"easy": 0.678934, "medium": 0.695847, "hard": 0.525187}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gt-dir", type=Path, default=SHARED / "data" / "widerface" / "eval_gt")
    parser.add_argument("--pred-dir", type=Path, default=SHARED / "reference" / "wider_eval_case1" / "predictions")
    parser.add_argument("--repeat", type=int, default=3, help="evaluation runs; the best is reported")
    parser.add_argument("--boxes-per-image", type=int, default=0, help="pad each image to about N boxes")
    args = parser.parse_args(argv)
    if not args.gt_dir.is_dir() or not args.pred_dir.is_dir():
        print(f"missing {args.gt_dir} or {args.pred_dir}", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    gt = load_wider_gt(args.gt_dir)
    t1 = time.perf_counter()
    preds = read_predictions(args.pred_dir)
    t2 = time.perf_counter()
    if args.boxes_per_image:
        rng = np.random.default_rng(0)
        for key, p in preds.items():
            if len(p) == 0 or len(p) >= args.boxes_per_image:
                continue
            extra = p[rng.integers(0, len(p), args.boxes_per_image - len(p))].copy()
            extra[:, :4] += rng.normal(0, 4, (len(extra), 4))
            extra[:, 4] *= rng.uniform(0.1, 1.0, len(extra))
            preds[key] = np.concatenate([p, extra])
    num_boxes = sum(len(p) for p in preds.values())

    times = []
    for _ in range(max(args.repeat, 1)):
        start = time.perf_counter()
        result = evaluate(preds, gt)
        times.append(time.perf_counter() - start)

    print(f"load gt           {t1 - t0:7.3f} s")
    print(f"read predictions  {t2 - t1:7.3f} s  ({len(preds)} files, {num_boxes} boxes)")
    print(f"evaluate (best)   {min(times):7.3f} s  (runs: {', '.join(f'{t:.3f}' for t in times)})")
    print(f"total             {t1 - t0 + t2 - t1 + min(times):7.3f} s")
    print(format_table(result))
    if not args.boxes_per_image:
        for setting, want in OFFICIAL.items():
            print(f"{setting:<8} AP {result.ap[setting]:.6f}  official MATLAB {want:.6f}  diff {result.ap[setting] - want:+.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
