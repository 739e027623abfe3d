#!/usr/bin/env bash
# Submit a training job and, depending on it, the evaluation + export job of the same run.
# Arguments are training-config overrides.
#
#   RUN_DIR=runs/xlmr CONFIG=configs/xmind-xlmr-base-lora.yaml NODES=4 slurm/submit.sh train.lr=3e-4
#
#   RUN_DIR  the run directory (required: both jobs must name the same one)
#   CONFIG   training config (default: configs/debug/tiny.yaml)
#   NODES    nodes for training (default: 2)
#   (ACCELERATE_CONFIG, NGPU, STOP_TIMEOUT reach launch/run_train.sh through the environment)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RUN_DIR:?set RUN_DIR to the run directory both jobs use}"
export RUN_DIR CONFIG=${CONFIG:-configs/debug/tiny.yaml}

# sbatch hands the jobs this environment (--export=ALL is its default)
train=$(sbatch --parsable --nodes "${NODES:-2}" slurm/train.sbatch "run_dir=$RUN_DIR" "$@")
train=${train%%;*}  # --parsable prints "id" or "id;cluster"
# afterok: only once training has exited 0; a requeued (preempted) job has not
after=$(sbatch --parsable --dependency="afterok:$train" slurm/eval_export.sbatch)
echo "training: job $train; evaluation + export once it succeeds: job ${after%%;*}"
