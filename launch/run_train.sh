#!/usr/bin/env bash
# Train mlrec on this node under accelerate; every setting comes from the environment, and the
# remaining arguments are training-config overrides passed on to `mlrec train`.
#
#   launch/run_train.sh                                        # tiny debug run, all GPUs here
#   NGPU=8 CONFIG=configs/xmind-xlmr-base-lora.yaml launch/run_train.sh train.lr=3e-4
#   NGPU=8 ACCELERATE_CONFIG=launch/accelerate/deepspeed_zero3.yaml CONFIG=... launch/run_train.sh
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=node001 NGPU=8 launch/run_train.sh   # once per node
#                                                              # (slurm/train.sbatch does this)
#
#   CONFIG             training config (default: configs/debug/tiny.yaml)
#   NGPU               processes on this node (default: the GPUs nvidia-smi lists, else 1)
#   NNODES, NODE_RANK  machines in the job and this one's index (default: SLURM's, else 1 and 0)
#   MASTER_ADDR        address of node 0, the c10d rendezvous host (default: 127.0.0.1)
#   MASTER_PORT        its port (default: 29500)
#   ACCELERATE_CONFIG  accelerate config (default: launch/accelerate/multi_gpu.yaml for one
#                      node, multi_node.yaml for several)
#   STOP_TIMEOUT       seconds the ranks get to checkpoint after SIGUSR1/SIGTERM before the
#                      launcher kills them (default: 300; keep it under the SLURM warning time)
#
# On a machine without GPUs the processes run on CPU over gloo (ACCELERATE_USE_CPU=true, or
# DS_ACCELERATOR=cpu for a DeepSpeed config).
# A run stopped by SIGUSR1/SIGTERM checkpoints at the next step boundary; its ranks exit 75.
set -euo pipefail
# defaults are found next to this script; paths the caller gives stay relative to their cwd
here=$(cd "$(dirname "$0")" && pwd)

CONFIG=${CONFIG:-$here/../configs/debug/tiny.yaml}
NNODES=${NNODES:-${SLURM_NNODES:-1}}
NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
NGPU=${NGPU:-$((gpus > 0 ? gpus : 1))}
# The launcher catches these, forwards them to every rank and waits STOP_TIMEOUT for the
# checkpoint; SIGUSR1 is SLURM's time-limit warning, and unlisted it would kill the launcher.
export PET_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${STOP_TIMEOUT:-300}

if [ -z "${ACCELERATE_CONFIG:-}" ]; then
  if [ "$NNODES" -gt 1 ]; then
    ACCELERATE_CONFIG=$here/accelerate/multi_node.yaml
  elif [ "$NGPU" -gt 1 ]; then
    ACCELERATE_CONFIG=$here/accelerate/multi_gpu.yaml
  else
    # One process needs no launcher, and accelerate's single-process one would neither forward
    # a stop signal to the trainer nor pass on its exit code (75: checkpointed, requeue me).
    exec "${PYTHON:-python}" -m mlrec train --config "$CONFIG" "$@"
  fi
fi

if [ "$gpus" -eq 0 ]; then
  if grep -q '^distributed_type: DEEPSPEED' "$ACCELERATE_CONFIG"; then
    # DeepSpeed runs on CPU through its own accelerator setting; ACCELERATE_USE_CPU would
    # silently swap DeepSpeed for plain DDP
    export DS_ACCELERATOR=cpu
  else
    # accelerate's multi-GPU launcher then starts real processes on gloo (without it: one process)
    export ACCELERATE_USE_CPU=true
  fi
fi

exec accelerate launch --config_file "$ACCELERATE_CONFIG" \
  --num_processes $((NGPU * NNODES)) --num_machines "$NNODES" --machine_rank "$NODE_RANK" \
  --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" \
  -m mlrec train --config "$CONFIG" "$@"
