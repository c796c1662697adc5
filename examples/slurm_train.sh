#!/usr/bin/env bash
# Data-parallel dtrl training on a SLURM cluster: one torchrun launcher per node,
# one training process per GPU (docs/scaling.md). Submit with
#   sbatch examples/slurm_train.sh
# and again (or with --requeue) after a time-out: a run directory that already has a
# config.yaml is resumed from its newest checkpoint.
#SBATCH --job-name=dtrl-large
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail

GPUS_PER_NODE=${GPUS_PER_NODE:-8}
# Both paths must be on a filesystem that every node sees: every rank reads the
# dataset, and on resume every rank reads the checkpoint that rank 0 wrote.
DATASET=${DATASET:-/shared/data/breakout-store}   # dtrl data convert SRC DST --store
OUT_DIR=${OUT_DIR:-/shared/runs/dtrl-large}

resume=()
if [ -f "$OUT_DIR/config.yaml" ]; then
    resume=(--resume)
fi

head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export OMP_NUM_THREADS=$((SLURM_CPUS_PER_TASK / GPUS_PER_NODE))

# batch_size (128 in configs/large.yaml) is per process: the global batch is
# batch_size x nodes x GPUs per node. reward_scale=1 suits Atari returns.
srun torchrun \
    --nnodes "$SLURM_NNODES" \
    --nproc-per-node "$GPUS_PER_NODE" \
    --rdzv-backend c10d \
    --rdzv-endpoint "$head_node:29500" \
    --rdzv-id "$SLURM_JOB_ID" \
    -m dtrl train -c configs/large.yaml ${resume[@]+"${resume[@]}"} \
    dataset="$DATASET" out_dir="$OUT_DIR" reward_scale=1
