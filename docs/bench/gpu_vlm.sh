#!/usr/bin/env bash
# The ablation-base VLM through the trainer on one GPU (docs/benchmarks.md, "Stage 0 and the ablation base on one
# H200 GPU"), from the repository root:   bash docs/bench/gpu_vlm.sh OUT_DIR [SECONDS]
# configs/pretrain-ablation-base-gpu.yaml with 64-sample steps, eager, until the time limit stops it (exit 124);
# its metrics.jsonl gives tokens/s and images/s, and MFU is computed afterwards from mm1lab.flops and the bf16
# matmul peak that gpu_stage0.sh measured. TORCH_LOGS=recompiles shows whether a kernel is compiled again.
set -u
out=${1:?usage: gpu_vlm.sh OUT_DIR [SECONDS]}
mkdir -p "$out"
runs=$(mktemp -d)
export PYTHONUNBUFFERED=1 MM1LAB_CACHE="$runs/cache" TORCH_LOGS=recompiles
timeout "${2:-200}" python3 -m mm1lab.train.cli configs/pretrain-ablation-base-gpu.yaml --set parallel=none \
  --set batch_size=64 --set steps=1000 --set compile=false --set data.num_workers=8 --set track.wandb=false \
  --set track.tensorboard=false --set track.progress=false --set track.log_every=1 \
  --set checkpoint.every=100000 --set out_dir="$runs/vlm" > "$out/vlm.log" 2>&1
echo "vlm exit $? (124: stopped by its time limit, as planned)" >> "$out/vlm.log"
cp "$runs/vlm/metrics.jsonl" "$out/vlm_metrics.jsonl" 2>/dev/null
grep -c "Recompiling" "$out/vlm.log"
tail -n 3 "$out/vlm.log"
