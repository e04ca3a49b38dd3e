#!/usr/bin/env bash
# Multi-node (or single-node) DDP through torchrun: run this same script on every machine, each with its
# own NODE_RANK; every argument is passed on to `fashiondist train`.
#
#   # machine 0 (its address is MASTER_ADDR for everyone):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash launch/torchrun.sh --models all --data fashion-mnist
#   # machine 1:
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash launch/torchrun.sh --models all --data fashion-mnist
#
#   # one machine, all its GPUs (the defaults):
#   bash launch/torchrun.sh --model resnet9
#
# Environment (default): NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500),
# NPROC_PER_NODE (gpu: one process per visible GPU; a number, e.g. 2, on a CPU-only machine, together with
# ACCELERATE_USE_CPU=1 so the processes form a gloo group instead of training alone), PYTHON (python3).
# TORCHRUN_DRY_RUN=1 prints the command instead of running it.
#
# Preemption: SIGTERM and SIGUSR1 sent to this script reach torchrun itself (exec below), which forwards
# them to every worker (--signals-to-handle); each worker saves OUT/last at its next step boundary and
# exits 0. torchrun then still exits 1, as it does after any signal it handles; rerun with
# `--resume auto` (same --out) to continue. Workers get --shutdown-timeout seconds to save before SIGKILL.
# Under SLURM prefer launch/slurm/train.sbatch, which starts the workers with srun directly.
set -euo pipefail

NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
NPROC_PER_NODE=${NPROC_PER_NODE:-gpu}
PYTHON=${PYTHON:-python3}

cmd=(
    "$PYTHON" -m torch.distributed.run
    --nnodes "$NNODES"
    --node-rank "$NODE_RANK"
    --nproc-per-node "$NPROC_PER_NODE"
    --master-addr "$MASTER_ADDR"
    --master-port "$MASTER_PORT"
    --signals-to-handle "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
    --shutdown-timeout 120
    -m fashiondist train "$@"
)

if [[ -n "${TORCHRUN_DRY_RUN:-}" ]]; then
    printf '%q ' "${cmd[@]}"
    printf '\n'
    exit 0
fi
exec "${cmd[@]}"
