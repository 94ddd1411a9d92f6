#!/usr/bin/env bash
# Export a training checkpoint to ONNX (no further steps) and compare it with the best Gaussian
# filter on a held-out simulated movie:  benchmarks/eval_checkpoint.sh FRAMES.tif RUN.ckpt [SEED]
set -euo pipefail
frames=$1
ckpt=$2
seed=${3:-2}
snap=$(mktemp -d)/snapshot
cp "$ckpt" "$snap.ckpt"
step=$(python -c "import torch,sys; print(torch.load(sys.argv[1], weights_only=False)['state']['step'])" "$snap.ckpt")
livedenoise train --frames "$frames" --out "$snap.onnx" --resume "$snap.ckpt" --steps "$step" 2>&1 | grep -E "done:|export: max"
(cd "$(dirname "$0")/.." && python -m benchmarks.default_model_check --model "$snap.onnx" --seed "$seed") | tail -n 2
