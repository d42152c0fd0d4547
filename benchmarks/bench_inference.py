"""The inference benchmark of the "deploy and go fast" issue: ``srn bench --model srn_r50`` with presets.

On CPU (the default): batch-1 latency at 640x480 of SRN-R50 against torchvision's
RetinaNet-R50-FPN, their ratio and SRN's post-processing share; no throughput run. One thread:
on a shared machine, two OpenMP threads waiting on a busy core make runs up to 100x slower and
unrepeatable; pass ``--threads N`` to override.
With ``--gpu``: 640x480 and 1024x1024, throughput at batch 16, bf16 (SRN: its bf16 inference copy,
the peer: autocast), channels_last. ``benchmarks/gpu_inference.sh`` adds CUDA graphs and 1024x1024 throughput.

    python benchmarks/bench_inference.py                       # CPU, writes benchmarks/results/bench_inference_cpu.json
    python benchmarks/bench_inference.py --gpu --json gpu.json

Any ``srn bench`` option given after these overrides the preset.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from srn.cli import main  # noqa: E402  (a script may drive the command line; the package may not)

HERE = Path(__file__).resolve().parent
CPU = ["bench", "--model", "srn_r50", "--device", "cpu", "--sizes", "640x480", "--batch", "0", "--warmup", "1", "--iters", "5", "--threads", "1",
       "--json", str(HERE / "bench_inference_cpu.json")]
GPU = ["bench", "--model", "srn_r50", "--device", "cuda", "--sizes", "640x480", "1024x1024", "--batch", "16", "--dtype", "bf16",
       "--channels-last", "--warmup", "5", "--iters", "30", "--json", str(HERE / "bench_inference_gpu.json")]

if __name__ == "__main__":
    args = sys.argv[1:]
    preset = GPU if "--gpu" in args else CPU
    sys.exit(main(preset + [a for a in args if a != "--gpu"]))
