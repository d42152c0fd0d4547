"""Why the Detector runs one image per forward pass on the CPU: the network on 8 images of one
canonical size (512x384, noise) as one batch of 8 against 8 batches of one, one thread, for the
shipped model's PyTorch path (BatchNorm folded, channels_last) and its int8 ONNX file; the two
ways take turns, ``--rounds`` times, and the median is reported.

    python experiments/bench_cpu_batch.py --rounds 5
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from srn import Detector
from srn.inference import DEFAULT_WEIGHTS
from srn.inference.detector import DEFAULT_CPU_WEIGHTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    images = torch.rand(8, 3, 384, 512, generator=torch.Generator().manual_seed(0))
    print("| runtime | batch of 8, s | 8 batches of 1, s | batch / single |")
    print("|---|---:|---:|---:|")
    for name, weights in (("PyTorch (folded, channels_last)", DEFAULT_WEIGHTS), ("onnxruntime int8", DEFAULT_CPU_WEIGHTS)):
        detector = Detector(weights, device="cpu", threads=1)
        run = detector.backend.detections
        run(images[:1], 0.5)
        run(images, 0.5)
        batched, single = [], []
        with torch.inference_mode():
            for _ in range(args.rounds):
                start = time.perf_counter()
                run(images, 0.5)
                batched.append(time.perf_counter() - start)
                start = time.perf_counter()
                for i in range(len(images)):
                    run(images[i : i + 1], 0.5)
                single.append(time.perf_counter() - start)
        b, s = float(np.median(batched)), float(np.median(single))
        print(f"| {name} | {b:.3f} | {s:.3f} | {b / s:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
