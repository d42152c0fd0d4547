"""The int8 latency of the shipped architecture with other heads (random weights: speed does not depend on
their values), exported and quantised as the shipped file is, median of 15 alternating runs on a
512x640 input, one thread, one run (benchmarks/RESULTS.md, "Where the int8 network time goes").

    python experiments/bench_head_variants.py
"""
import time, glob, numpy as np, onnxruntime as ort
from srn.weights import load_model
from srn.model.srn import build_model
from srn.export.onnx import export_onnx
from srn.export.quantize import quantize_onnx
teacher, cfg = load_model("srn/assets/srn_mobilenet_v2.pt")
import dataclasses
variants = {
  "teacher": dataclasses.replace(cfg.model, separable_head=False),
  "sep48": dataclasses.replace(cfg.model, separable_head=True, tower_convs=2),
  "sep48_t1": dataclasses.replace(cfg.model, separable_head=True, tower_convs=1),
  "sep48_fpn": dataclasses.replace(cfg.model, separable_head=True, separable_fpn=True),
  "lite32": dataclasses.replace(cfg.model, width=32, separable_head=True, separable_fpn=True),
}
cal = sorted(glob.glob("../shared/data/demo/images/*"))[:4]
sessions = {}
for name, mc in variants.items():
    m = build_model(dataclasses.replace(mc, pretrained=None)).eval()
    export_onnx(m, f"/tmp/bench_head_variants_{name}.onnx")
    quantize_onnx(f"/tmp/bench_head_variants_{name}.onnx", f"/tmp/bench_head_variants_{name}.int8.onnx", cal)
    so = ort.SessionOptions(); so.intra_op_num_threads=1; so.inter_op_num_threads=1
    sessions[name] = ort.InferenceSession(f"/tmp/bench_head_variants_{name}.int8.onnx", so, providers=["CPUExecutionProvider"])
x = np.random.rand(1,3,512,640).astype(np.float32)
times = {k: [] for k in sessions}
for r in range(15):
    for k, s in sessions.items():
        t = time.perf_counter(); s.run(None, {"images": x}); times[k].append(time.perf_counter()-t)
base = np.median(times["teacher"])
for k, v in times.items(): print(f"{k:10s} {np.median(v)*1000:6.1f} ms  {np.median(v)/base:.2f}x")
