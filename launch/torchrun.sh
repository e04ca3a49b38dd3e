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
# MAX_RESTARTS (3), RDZV_ID (fashiondist), FASHIONDIST_PREEMPT_SIGNAL (USR1),
# NPROC_PER_NODE (gpu: one process per visible GPU; a number, e.g. 2, on a CPU-only machine, together with
# ACCELERATE_USE_CPU=1 so the processes form a gloo group instead of training alone), PYTHON (python3).
# TORCHRUN_DRY_RUN=1 prints the command instead of running it.
#
# Elastic restarts: MAX_RESTARTS (default 3) lets torchrun's agent restart the whole worker group when a
# worker dies (killed, OOM, a lost node) instead of ending the run; the restarted workers see
# TORCHELASTIC_RESTART_COUNT > 0 and resume from OUT/last by themselves (no --resume auto needed), so the run
# ends with the same optimizer steps and schedule as an uninterrupted one. The workers meet through a c10d
# rendezvous at MASTER_ADDR:MASTER_PORT (RDZV_ID names the job: give each concurrent job its own).
#
# Preemption: SIGTERM and the preemption signal (FASHIONDIST_PREEMPT_SIGNAL: USR1, the default, or USR2)
# sent to this script reach torchrun itself (exec below), which forwards them to every worker
# (--signals-to-handle); each worker saves OUT/last at its next step boundary and exits 0 (a signal is never
# taken for a failure to restart from). torchrun then still exits 1, as it does after any signal it handles;
# rerun with `--resume auto` (same --out) to continue. Workers get --shutdown-timeout seconds to save before
# SIGKILL. Under SLURM prefer launch/slurm/train.sbatch, which starts the workers with srun directly.
set -euo pipefail

NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
NPROC_PER_NODE=${NPROC_PER_NODE:-gpu}
MAX_RESTARTS=${MAX_RESTARTS:-3}
RDZV_ID=${RDZV_ID:-fashiondist}
PYTHON=${PYTHON:-python3}
PREEMPT=${FASHIONDIST_PREEMPT_SIGNAL:-USR1}
PREEMPT=${PREEMPT#SIG}
case $PREEMPT in
    USR1 | USR2) ;;
    *) echo "launch/torchrun.sh: error: FASHIONDIST_PREEMPT_SIGNAL=$PREEMPT: use USR1 or USR2" >&2; exit 2 ;;
esac
export FASHIONDIST_PREEMPT_SIGNAL=$PREEMPT  # the workers handle the same signal
# A restarted group must not meet in the store of the group it replaces: torchrun's agent shares its c10d
# rendezvous store with the workers across restarts without a per-attempt prefix (torch 2.14), so the
# restarted ranks read the dead ones' gloo addresses and fail ("connectFullMesh ... Connection refused").
# With sharing off, each group's rank 0 hosts a fresh store (checked here: kill -9 of a worker, restart 1
# resumes from last/ and finishes).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}

cmd=(
    "$PYTHON" -m torch.distributed.run
    --nnodes "$NNODES"
    --node-rank "$NODE_RANK"
    --nproc-per-node "$NPROC_PER_NODE"
    --rdzv-backend c10d
    --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT"
    --rdzv-id "$RDZV_ID"
    --max-restarts "$MAX_RESTARTS"
    --signals-to-handle "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIG$PREEMPT"
    --shutdown-timeout 120
    -m fashiondist train "$@"
)

if [[ -n "${TORCHRUN_DRY_RUN:-}" ]]; then
    printf '%q ' "${cmd[@]}"
    printf '\n'
    exit 0
fi
exec "${cmd[@]}"
