#!/usr/bin/env bash
# GPU checks in one short run (for a session lent a CUDA machine): training throughput with the
# strong augmentation on the device, autocast (bf16/fp16) vs fp32, then a short NEU training on
# the GPU. Results land in benchmarks/results/ (and in $OUT when set, for the device tool).
#   bash benchmarks/device_check.sh            # about 5 minutes on one GPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
$PY benchmarks/train_speed.py --device cuda --sizes 128 224 --batch 32 --steps 20 --threads 4 --amp auto --name cuda_amp
$PY benchmarks/train_speed.py --device cuda --sizes 128 224 --batch 32 --steps 20 --threads 4 --amp off --name cuda_fp32
$PY benchmarks/ssl_neu.py --ks 5 --seeds 0 --threads 4 --set train.device=cuda train.num_workers=4 --name ssl_neu_cuda
if [ -n "${OUT:-}" ]; then cp benchmarks/results/train_speed_cuda_*.json benchmarks/results/ssl_neu_cuda.json "$OUT"/; fi
