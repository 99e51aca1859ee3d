#!/usr/bin/env bash
# SLURM batch script: one task per GPU; Lightning detects SLURM and sets ranks itself.
# Edit the #SBATCH lines for your cluster (no account / partition is assumed), then:
#   sbatch scripts/launch_slurm.sh --config vit_giant_fsdp --data.train_manifests /data/videos.csv
#SBATCH --job-name=worldmodel
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append
# ahead of the time limit (or a preemption) SLURM sends SIGUSR1: the run stops at the end of its batch,
# writes checkpoints/last.ckpt there and requeues this job, which resumes exactly (--resume auto)
#SBATCH --signal=USR1@120
#SBATCH --requeue
set -euo pipefail
NODES=${SLURM_JOB_NUM_NODES:-1}
GPUS=${SLURM_NTASKS_PER_NODE:-8}
# the repository's environment (scripts/install.sh, in the job's working folder: where it was submitted,
# or #SBATCH --chdir) when there is one, so the job does not depend on what was activated at submission;
# PY=/path/to/python overrides it
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
fi
# --resume auto: a requeued job continues from run_dir/checkpoints/last.ckpt, mid-epoch and exactly. It comes
# after "$@" (a --config there, such as a run's own logs/config.yaml with its "resume: null", must not turn
# it off), unless "$@" names a --resume itself: that one counts (and a requeued job continues its own run).
RESUME=(--resume auto)
for arg in "$@"; do
  case "$arg" in --resume | --resume=*) RESUME=() ;; esac
done
# The layout after "$@" (with its --config): options after a --config override it, and these must match srun's.
srun "$PY" -m worldmodel.cli pretrain "$@" ${RESUME[@]+"${RESUME[@]}"} \
  --trainer.num_nodes "$NODES" --trainer.devices "$GPUS"
