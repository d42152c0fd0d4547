"""FLOPs and one-thread CPU latency of the light SRN designs against the shipped default model.

Every variant keeps the MobileNetV2 backbone (the only ImageNet weights the project has), STC on
levels 0-2, STR on 3-5 and the RFE; it changes the cost of the head and the FPN. FLOPs are torch's
FlopCounterMode (2 per multiply-add) at 640x480; latency is the network's forward pass (no
post-processing), the median of ``--iters`` runs on one thread, in PyTorch and in onnxruntime (the
raw-output graph, exported as ``srn export onnx`` does). The ratios are against the shipped model in the same run, so
they hold even though absolute times drift with the machine's load.

    OMP_NUM_THREADS=1 python experiments/bench_lite_design.py --out experiments/lite_design.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from srn.config import ModelConfig, TrainingConfig, load_yaml
from srn.model import SRN
from srn.model.rfe import RFE
from srn.weights import load_model

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "srn/assets/srn_mobilenet_v2.pt"
FLOP_SIZE = (480, 640)
NOTES_HEADING = "## Reading"
LATENCY_SIZES = ((480, 640), (375, 500))

SHIPPED_CONFIG = ModelConfig(backbone="mobilenet_v2", width=48, init="scaled")
# name -> (what changes, config); the separable RFE runs its four branches fused (srn/model/rfe.py)
VARIANTS: dict[str, tuple[str, ModelConfig]] = {
    "A": ("separable head towers + depthwise RFE", replace(SHIPPED_CONFIG, separable_head=True)),
    "B": ("A + separable FPN outputs", replace(SHIPPED_CONFIG, separable_head=True, separable_fpn=True)),
    "C": ("B + one 3x3 per tower (conv, RFE)", replace(SHIPPED_CONFIG, separable_head=True, separable_fpn=True, tower_convs=1)),
    "D": ("B at width 32 (= srn_lite)", replace(SHIPPED_CONFIG, width=32, separable_head=True, separable_fpn=True)),
    "E": ("C at width 32", replace(SHIPPED_CONFIG, width=32, separable_head=True, separable_fpn=True, tower_convs=1)),
    "F": ("B at width 64", replace(SHIPPED_CONFIG, width=64, separable_head=True, separable_fpn=True)),
    "G": ("C at width 64", replace(SHIPPED_CONFIG, width=64, separable_head=True, separable_fpn=True, tower_convs=1)),
}
# The same networks with the RFE run branch by branch (twelve quarter-width layers and a concat).
UNFUSED = {"B unfused": "B", "D unfused": "D"}


def unfused(model: SRN) -> SRN:
    for module in model.modules():
        if isinstance(module, RFE):
            module.separable = False  # same parameters, the paper's branch-by-branch evaluation
    return model


def gflops(model: torch.nn.Module, size: tuple[int, int]) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(1, 3, *size))
    return counter.get_total_flops() / 1e9


def ort_session(model: SRN, path: Path):
    import onnxruntime

    # The TorchScript tracer with dynamic batch, height and width, as srn.export.onnx uses it.
    torch.onnx.export(
        _RawOutputs(model),
        (torch.rand(2, 3, *FLOP_SIZE),),
        path,
        dynamo=False,
        opset_version=17,
        input_names=["images"],
        dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}},
        do_constant_folding=True,
    )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class _RawOutputs(torch.nn.Module):
    """SRN's logits and deltas as a flat tuple, as the raw graph of ``srn export onnx`` has them."""

    def __init__(self, model: SRN) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(images)
        fields = outputs if isinstance(outputs, dict) else outputs._asdict()  # a dict or a NamedTuple
        keys = ("step1_logits", "step1_deltas", "step2_logits", "step2_deltas")
        return tuple(t for k in keys for t in fields[k] if t is not None)


def runners(model: SRN, path: Path) -> dict[str, Callable[[], object]]:
    """One zero-argument call per (backend, size), each on its own fixed random image."""
    model.eval()
    session = ort_session(model, path)
    input_name = session.get_inputs()[0].name
    calls: dict[str, Callable[[], object]] = {}
    for h, w in LATENCY_SIZES:
        images = torch.rand(1, 3, h, w)
        array = images.numpy()
        calls[f"torch_{w}x{h}"] = lambda m=model, x=images: m(x)
        calls[f"ort_{w}x{h}"] = lambda x=array: session.run(None, {input_name: x})
    return calls


def time_interleaved(calls: dict[str, dict[str, Callable[[], object]]], warmup: int, iters: int) -> dict[str, dict[str, float]]:
    """Median ms of each call. Rounds visit every model in turn, so a change in the machine's load
    (other jobs share its cores) falls on all models alike instead of on whichever ran then."""
    times: dict[str, dict[str, list[float]]] = {m: {k: [] for k in c} for m, c in calls.items()}
    with torch.no_grad():
        for round_index in range(warmup + iters):
            for model_name, model_calls in calls.items():
                for key, fn in model_calls.items():
                    start = time.perf_counter()
                    fn()
                    if round_index >= warmup:
                        times[model_name][key].append(time.perf_counter() - start)
    return {m: {k: 1000 * statistics.median(v) for k, v in t.items()} for m, t in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--preset", action="append", default=[], help="also measure a model preset (yaml path)")
    parser.add_argument("--out", type=Path, help="write the Markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    models: list[tuple[str, str, Callable[[], SRN]]] = [
        ("shipped", "srn/assets/srn_mobilenet_v2.pt (width 48, dense)", lambda: load_model(SHIPPED)[0])
    ]
    models += [(name, what, lambda c=config: SRN.from_config(c)) for name, (what, config) in VARIANTS.items()]
    models += [(name, f"{base}, RFE branch by branch", lambda c=VARIANTS[base][1]: unfused(SRN.from_config(c)))
               for name, base in UNFUSED.items()]
    for preset in args.preset:
        config = load_yaml(TrainingConfig, preset).model
        models.append((Path(preset).stem, f"preset `{preset}`", lambda c=config: SRN.from_config(replace(c, pretrained=None))))

    rows: dict[str, dict[str, float]] = {}
    calls: dict[str, dict[str, Callable[[], object]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, _, build) in enumerate(models):
            model = build().eval()
            rows[name] = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "gflops": gflops(model, FLOP_SIZE)}
            calls[name] = runners(model, Path(tmp) / f"{index}.onnx")
        for name, latency in time_interleaved(calls, args.warmup, args.iters).items():
            rows[name].update(latency)
            print(name, {k: round(v, 2) for k, v in rows[name].items()}, file=sys.stderr, flush=True)

    base = rows["shipped"]
    sizes = [f"{w}x{h}" for h, w in LATENCY_SIZES]
    header = ["variant", "change", "params (M)", "GFLOP 640x480", "x shipped"]
    for size in sizes:
        header += [f"PyTorch {size} ms", f"ORT {size} ms", "ORT x shipped"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, what, _ in models:
        row = rows[name]
        cells = [name, what, f"{row['params_m']:.3f}", f"{row['gflops']:.2f}", f"{row['gflops'] / base['gflops']:.2f}"]
        for size in sizes:
            cells += [f"{row[f'torch_{size}']:.1f}", f"{row[f'ort_{size}']:.1f}", f"{row[f'ort_{size}'] / base[f'ort_{size}']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        command = "OMP_NUM_THREADS=1 python experiments/bench_lite_design.py " + " ".join(sys.argv[1:])
        text = (
            "# SRN-Lite: FLOPs and CPU latency of the design choices\n\n"
            f"```\n{command}\n```\n\n"
            f"Network forward pass only (no post-processing), batch 1, one thread, median of {args.iters} "
            f"interleaved rounds after {args.warmup} warm-up rounds. ORT is onnxruntime {_ort_version()} on "
            "the raw-output graph (TorchScript exporter, dynamic batch, height and width, as `srn export "
            f"onnx` writes it); torch {torch.__version__}; {_cpu_name()}. Ratios are against the shipped "
            "model in the same run. Random weights (the latency of a convolution does not depend on "
            "its values), except the shipped model's.\n\n" + table + "\n"
        )
        # Keep the hand-written reading of the numbers that follows the table.
        old = args.out.read_text() if args.out.exists() else ""
        notes = old[old.index(NOTES_HEADING):] if NOTES_HEADING in old else ""
        args.out.write_text(text + ("\n" + notes if notes else ""))
    return 0


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    raise SystemExit(main())
