#!/usr/bin/env bash
# One GPU lease's measurements (docs/benchmarks.md, "Stage 0 and the ablation base on one H200 GPU"), from the
# repository root:
#   bash docs/bench/gpu_stage0.sh OUT_DIR
# 1. CLIP pre-training of the ablation base's encoder (clip-l14-336: ViT-L/14 at 336 px, CLIP-L's text tower):
#    the model alone on pre-rendered batches (eager), `mm1lab train` for 100 s, then the model compiled
#    (python -m mm1lab.stage0.throughput).
# 2. The ablation-base VLM through the trainer (docs/bench/gpu_vlm.sh).
# Each part has its own time limit, so one that fails or runs long leaves the other's figures.
set -u
out=${1:?usage: gpu_stage0.sh OUT_DIR}
mkdir -p "$out"
runs=$(mktemp -d)
export PYTHONUNBUFFERED=1 MM1LAB_CACHE="$runs/cache"

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$out/gpu.txt" 2>&1
python3 -c "import torch, os; print('torch', torch.__version__, torch.cuda.get_device_name(), os.cpu_count(), 'cpus')" \
  >> "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"

timeout 300 python3 -m mm1lab.stage0.throughput --model clip-l14-336 --batch-size 64 --steps 15 --seconds 100 \
  --workers 12 --out "$runs/clip" > "$out/clip.log" 2>&1
echo "clip exit $?" >> "$out/clip.log"
cp "$runs/clip/throughput.json" "$out/clip_throughput.json" 2>/dev/null
cp "$runs/clip/metrics.jsonl" "$out/clip_metrics.jsonl" 2>/dev/null
tail -n 8 "$out/clip.log"

bash docs/bench/gpu_vlm.sh "$out" 130
ls -la "$out"
