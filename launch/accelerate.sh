#!/usr/bin/env bash
# `accelerate launch` that forwards the preemption signal to the ranks: every argument goes to
# `accelerate launch` as it is.
#
#   ACCELERATE_USE_CPU=1 bash launch/accelerate.sh --config_file launch/accelerate/cpu_ddp.yaml \
#       -m fashiondist train --model cnn --out runs/cnn
#   bash launch/accelerate.sh --config_file launch/accelerate/multi_gpu.yaml -m fashiondist train --models all
#   # elastic: restart the group up to 3 times when a rank dies; the ranks resume from OUT/last by themselves
#   bash launch/accelerate.sh --multi_gpu --num_processes 8 --max_restarts 3 --rdzv_backend c10d \
#       --main_process_ip 127.0.0.1 --main_process_port 29500 -m fashiondist train --models all
#
# Why: a multi-process `accelerate launch` runs torchrun's elastic agent in its own process, and that agent
# forwards only SIGTERM, SIGINT, SIGHUP and SIGQUIT to the ranks. SIGUSR1 (SLURM's usual warning signal)
# would end the launcher at once (exit 138) and leave the ranks training on without it. The agent reads
# the signals to forward from PET_SIGNALS_TO_HANDLE (torchrun's --signals-to-handle as an environment
# variable), set here; `exec` makes this script's process the launcher, so signal this script's PID.
# The ranks themselves also stop (saving OUT/last) when their launcher dies of any signal, this one or not.
#
# Environment: FASHIONDIST_PREEMPT_SIGNAL (USR1, or USR2), ACCELERATE (the command; default `accelerate`).
set -euo pipefail

PREEMPT=${FASHIONDIST_PREEMPT_SIGNAL:-USR1}
PREEMPT=${PREEMPT#SIG}
case $PREEMPT in
    USR1 | USR2) ;;
    *) echo "launch/accelerate.sh: error: FASHIONDIST_PREEMPT_SIGNAL=$PREEMPT: use USR1 or USR2" >&2; exit 2 ;;
esac
export FASHIONDIST_PREEMPT_SIGNAL=$PREEMPT
export PET_SIGNALS_TO_HANDLE="SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIG$PREEMPT"
# A restarted group must not meet in the store of the group it replaces: torchrun's agent shares its c10d
# rendezvous store with the workers across restarts without a per-attempt prefix (torch 2.14), so the
# restarted ranks read the dead ones' gloo addresses and fail ("connectFullMesh ... Connection refused").
# With sharing off, each group's rank 0 hosts a fresh store (checked here: kill -9 of a worker, restart 1
# resumes from last/ and finishes).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
exec "${ACCELERATE:-accelerate}" launch "$@"
