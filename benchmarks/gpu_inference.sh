#!/usr/bin/env bash
# The GPU checks of the "deploy and go fast" issue in one prepared run (about 6 minutes on an H200):
#   1. the CUDA-graph path against the eager reference on real photos (tests/test_runner.py);
#   2. srn bench, SRN-R50 vs torchvision RetinaNet-R50, bf16, CUDA graphs: latency at 640x480 and
#      1024x1024, throughput at batch 16 and 1024x1024, post-processing share, matrix-rate fraction;
#   3. the same without CUDA graphs (the eager bf16 runner), for the graphs' effect;
#   4. the shipped default model on a real photo (its post-processing share with real candidates).
# Results go to benchmarks/RESULTS.md with the date, the card and these commands.
# Usage (repository root): bash benchmarks/gpu_inference.sh OUT_DIR [quick]
#   quick: tiny CPU settings, to check the script itself on a machine without a GPU.
set -u
out=${1:?output folder}
quick=${2:-}
start=$(date +%s)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p "$out"
log="$out/inference.log"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
} > "$log" 2>&1

photo=docs/astronaut.png
if [ -n "$quick" ]; then
  common="--device cpu --warmup 0 --iters 1 --backbone resnet18 --width 32 --matmul-size 256"
  r50="--model srn_r50 $common --sizes 96x64 128x128 --batch 2 --throughput-size 128x128"
  graphs=""
  default="--device cpu --warmup 0 --iters 1 --sizes 96x64 --batch 2 --matmul-size 256"
else
  r50="--model srn_r50 --device cuda --dtype bf16 --channels-last --warmup 5 --iters 30 --sizes 640x480 1024x1024 --batch 16 --throughput-size 1024x1024"
  graphs="--cuda-graphs"
  default="--device cuda --dtype bf16 --channels-last --warmup 5 --iters 30 --sizes 640x480 --batch 16"
fi

step() {  # step NAME TIMEOUT COMMAND...: run, log its output and how long it took
  local name=$1 limit=$2; shift 2
  echo "== $name $(date -u +%T): $*" >> "$log"
  timeout "$limit" "$@" >> "$log" 2>&1 || echo "== $name failed: $?" >> "$log"
}

step runner-tests 150 python -m pytest -q -p no:cacheprovider tests/test_runner.py tests/test_postprocess.py
step bench-graphs 200 python -m srn bench $r50 $graphs --json "$out/bench_r50_graphs.json"
step bench-eager 150 python -m srn bench $r50 --json "$out/bench_r50_eager.json"
step bench-default 100 python -m srn bench $default $graphs --weights srn/assets/srn_mobilenet_v2.pt --image $photo \
  --json "$out/bench_default_graphs.json"
echo "== done $(date -u +%T), $(( $(date +%s) - start )) s" >> "$log"
