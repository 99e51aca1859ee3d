#!/usr/bin/env bash
# Multi-GPU / multi-node pretraining with torchrun (no SLURM needed). Lightning reads the torchrun
# environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) itself. --resume auto: running
# the same command again (or a torchrun restart) continues the run in --run_dir, exactly; a --resume in
# the arguments replaces it.
#
# One node, 8 GPUs:
#   NPROC=8 bash scripts/launch_torchrun.sh --config vit_large_ddp --data.train_manifests my_videos.csv
# Two nodes (run on each node; NODE_RANK 0 and 1; MASTER_ADDR = node 0's address):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 NPROC=8 bash scripts/launch_torchrun.sh --config vit_large_ddp ...
set -euo pipefail
NPROC=${NPROC:-8}
NNODES=${NNODES:-1}
MASTER_ADDR_GIVEN=${MASTER_ADDR:-}${MASTER_PORT:-}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
# the repository's environment (scripts/install.sh) when there is one; PY=/path/to/python overrides it
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
fi
# one node and no address given: torchrun --standalone picks a free port, so two jobs on one machine do not
# collide on 29500
if [ "$NNODES" = 1 ] && [ -z "${MASTER_ADDR_GIVEN:-}" ]; then
  RENDEZVOUS=(--standalone)
else
  RENDEZVOUS=(--nnodes "$NNODES" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
fi
# --resume auto after "$@" (a --config there, such as a run's own logs/config.yaml with "resume: null", must
# not turn it off), unless "$@" names a --resume itself
RESUME=(--resume auto)
for arg in "$@"; do
  case "$arg" in --resume | --resume=*) RESUME=() ;; esac
done
exec "$PY" -m torch.distributed.run --nproc_per_node "$NPROC" "${RENDEZVOUS[@]}" \
  -m worldmodel.cli pretrain "$@" ${RESUME[@]+"${RESUME[@]}"} \
  --trainer.devices "$NPROC" --trainer.num_nodes "$NNODES"  # after "$@": a --config there must not reset them
