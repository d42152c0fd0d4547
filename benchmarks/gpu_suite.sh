#!/usr/bin/env bash
# The GPU checks of this project in one prepared run (results in benchmarks/RESULTS.md):
#   1. training throughput, SRN-R50 vs torchvision RetinaNet-R50, 1024x1024, bf16, batch 16;
#   2. training the shipped default model (recipes/default_model.yaml) in the time that is left.
# Inference (srn bench) was measured in an earlier device run: python benchmarks/bench_inference.py --gpu
# Usage (repository root, with .gpu/ packed by tools/pack_faces.py):
#   bash benchmarks/gpu_suite.sh OUT_DIR [BUDGET_SECONDS] [quick]
set -u
out=${1:?output folder}
budget=${2:-300}
quick=${3:-}
start=$(date +%s)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p "$out"
log="$out/suite.log"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
  nproc
} > "$log" 2>&1

if [ -n "$quick" ]; then
  device=cpu; train_args="--size 128 --batch 2 --iters 1 --warmup 1 --backbone resnet18"
  extra="train.batch_size=4 train.batch_per_device=4 data.size=128 data.workers=2 train.max_iters=3"
else
  device=cuda; train_args="--size 1024 --batch 16 --iters 5 --warmup 2"
  extra=""
fi

echo "== bench_train $(date -u +%T)" >> "$log"
timeout 70 python benchmarks/bench_train.py --device $device $train_args --json "$out/bench_train.json" >> "$log" 2>&1 || echo "bench_train failed: $?" >> "$log"

left=$(( budget - ($(date +%s) - start) - 40 ))
minutes=$(python -c "print(max(0.5, $left / 60))")
echo "== train default model for at most $minutes min $(date -u +%T)" >> "$log"
timeout $(( left + 25 )) python -m srn train recipes/default_model.yaml train.output_dir=/tmp/srn_default \
  train.max_minutes=$minutes $extra 2>&1 | tr '\r' '\n' | tail -60 >> "$log"
if [ ! -f /tmp/srn_default/model.pt ] && [ -f /tmp/srn_default/last.pt ]; then
  # Stopped early (time or a non-finite loss): keep the last checkpoint's weights, without the optimizer.
  python -c "from srn.weights import load_model, save_checkpoint; m, c = load_model('/tmp/srn_default/last.pt'); save_checkpoint(m, c, '/tmp/srn_default/model.pt')" >> "$log" 2>&1
fi
cp /tmp/srn_default/model.pt "$out/model.pt" 2>> "$log"
cp /tmp/srn_default/metrics.jsonl "$out/metrics.jsonl" 2>> "$log"
echo "== done $(date -u +%T), $(( $(date +%s) - start )) s" >> "$log"
