#!/usr/bin/env bash
# GPU check: train vit_base (bf16) for a few dozen steps and print clips/s, peak memory and MFU,
# then run one short real `worldmodel pretrain` on the built-in corpus on the GPU.
#   bash scripts/gpu_check.sh            (expects scripts/install.sh to have run; about 3-5 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
# a GPU that this torch cannot use (a CPU-only build, a driver too old for its CUDA) would otherwise make
# every step below run on the CPU: hours for vit_base, with meaningless figures
$PY -c "import sys, torch; ok = torch.cuda.is_available(); print('torch', torch.__version__, '| CUDA', torch.version.cuda, '| GPU usable:', ok); sys.exit(0 if ok else 'torch cannot use the GPU: reinstall with TORCH_BUILD=cuda bash scripts/install.sh')"
echo "== train step benchmark: vit_base, 16 x 224, bf16"
$PY scripts/bench_train.py --device cuda --encoder vit_base --frames 16 --resolution 224 --batch 16 \
    --pred-depth 12 --pred-dim 384 --steps 30 --warmup 5 --precision bf16 --out /tmp/gpu_bench_vit_base.json
echo "== same with activation checkpointing"
$PY scripts/bench_train.py --device cuda --encoder vit_base --frames 16 --resolution 224 --batch 16 \
    --pred-depth 12 --pred-dim 384 --steps 20 --warmup 3 --precision bf16 --activation-checkpointing
echo "== 40 real pretraining steps on the built-in corpus (bf16)"
rm -rf /tmp/gpu_check_run  # a fresh run each time (pretrain refuses a folder that holds one)
$PY -m worldmodel.cli pretrain --config tiny --run_dir /tmp/gpu_check_run \
    --trainer.accelerator gpu --trainer.precision bf16-mixed --trainer.max_steps 40 \
    --trainer.enable_progress_bar false --data.num_workers 4
