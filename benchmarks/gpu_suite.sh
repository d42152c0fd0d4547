#!/usr/bin/env bash
# Every GPU check of this project in one prepared run (see benchmarks/RESULTS.md):
#   1. training throughput, SRN-R50 vs torchvision RetinaNet-R50, 1024x1024, bf16, batch 16;
#   2. inference: srn bench (VGA latency, batch-16 1024x1024 throughput in bf16) vs the same peer;
#   3. training the shipped default model (tools/default_model.yaml) with the time that is left.
# Usage (repository root, with .gpu/ packed by tools/pack_faces.py):
#   bash benchmarks/gpu_suite.sh OUT_DIR [BUDGET_SECONDS] [quick]
set -u
out=${1:?output folder}
budget=${2:-540}
quick=${3:-}
start=$(date +%s)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p "$out"
log="$out/suite.log"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"
  python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
  nproc
} > "$log" 2>&1

if [ -n "$quick" ]; then
  device=cpu; train_args="--size 128 --batch 2 --iters 1 --warmup 1 --backbone resnet18"
  bench_args="--device cpu --sizes 64x64 --iters 1 --warmup 1 --batch 2"
  extra="train.batch_size=4 train.batch_per_device=4 data.size=128 data.workers=2 train.max_iters=3"
else
  device=cuda; train_args="--size 1024 --batch 16 --iters 10 --warmup 3"
  bench_args="--device cuda --dtype bf16 --channels-last --batch 16"
  extra=""
fi

echo "== bench_train $(date -u +%T)" >> "$log"
timeout 150 python benchmarks/bench_train.py --device $device $train_args --json "$out/bench_train.json" >> "$log" 2>&1 || echo "bench_train failed: $?" >> "$log"

echo "== srn bench $(date -u +%T)" >> "$log"
timeout 150 python -m srn bench $bench_args --json "$out/bench_infer.json" >> "$log" 2>&1 || echo "srn bench failed: $?" >> "$log"

left=$(( budget - ($(date +%s) - start) - 45 ))
minutes=$(python -c "print(max(0.5, $left / 60))")
echo "== train default model for at most $minutes min $(date -u +%T)" >> "$log"
timeout $(( left + 30 )) python -m srn train tools/default_model.yaml train.output_dir=/tmp/srn_default \
  train.max_minutes=$minutes $extra 2>&1 | tr '\r' '\n' | tail -80 >> "$log"
cp /tmp/srn_default/model.pt "$out/model.pt" 2>> "$log"
cp /tmp/srn_default/metrics.jsonl "$out/metrics.jsonl" 2>> "$log"
echo "== done $(date -u +%T), $(( $(date +%s) - start )) s" >> "$log"
