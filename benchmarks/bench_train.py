"""Training throughput of SRN against torchvision's RetinaNet-R50, measured in the same run.

Both train on the same synthetic batch (random pixels, a few random faces per image) with SGD, bf16
autocast on CUDA and channels_last; data loading is excluded. The achieved matrix rate is the
FLOP count (a training image costs about 3x the forward pass: 3 x 1.29 TFLOP for SRN-R50 at
1024x1024) over the step time, against the bf16 matmul rate measured in this run.

    python benchmarks/bench_train.py --device cuda --size 1024 --batch 16 --json train.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from srn.criterion import SRNCriterion
from srn.model import build_model


def synthetic_batch(batch: int, size: int, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen)
    targets = []
    for _ in range(batch):
        xy = torch.rand(8, 2, generator=gen) * size * 0.8
        wh = torch.rand(8, 2, generator=gen) * size * 0.2 + 8
        targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device), "ignore": torch.zeros(8, dtype=torch.bool, device=device),
                        "labels": torch.ones(8, dtype=torch.int64, device=device)})
    return images.to(device), targets


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    return (time.perf_counter() - start) / iters


def matmul_rate(device: torch.device) -> float:
    """FLOP/s of a large matmul (bf16 on CUDA, fp32 on CPU)."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_steps(lambda: a @ b, device, 3, 10)
    return 2 * n**3 / seconds


def srn_step_fn(args, device):
    model = build_model(backbone=args.backbone).to(device).to(memory_format=torch.channels_last).train()
    for module in model.modules():  # the trainer's default: BN statistics frozen
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    criterion = SRNCriterion(model.stc_levels, model.str_levels)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9, weight_decay=1e-4)
    images, targets = synthetic_batch(args.batch, args.size, device)
    images = images.contiguous(memory_format=torch.channels_last)
    amp = device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            outputs = model(images)
        loss = sum(criterion(outputs, targets).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step


def retinanet_step_fn(args, device):
    model = torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=args.size, max_size=args.size
    ).to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9, weight_decay=1e-4)
    images, targets = synthetic_batch(args.batch, args.size, device)
    images = list(images.float().div(255))
    targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
    amp = device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            losses = model(images, targets)
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step


def forward_flops(model, size: int) -> float:
    model = model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        if isinstance(model, torchvision.models.detection.RetinaNet):
            features = model.backbone(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
            model.head(list(features.values()))
        else:
            model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    rate = matmul_rate(device)
    results = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
               "torch": torch.__version__, "size": args.size, "batch": args.batch, "matmul_flops_per_s": rate}
    for name, build in (("srn", srn_step_fn), ("retinanet_r50", retinanet_step_fn)):
        model, step = build(args, device)
        seconds = time_steps(step, device, args.warmup, args.iters)
        flops = forward_flops(model, args.size)
        results[name] = {
            "step_s": seconds,
            "images_per_s": args.batch / seconds,
            "forward_gflop_per_image": flops / 1e9,
            "matrix_rate_fraction": 3 * flops * args.batch / seconds / rate,
        }
        if device.type == "cuda":
            results[name]["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            torch.cuda.reset_peak_memory_stats(device)
        del model, step
    results["srn_vs_retinanet_throughput"] = results["srn"]["images_per_s"] / results["retinanet_r50"]["images_per_s"]
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
