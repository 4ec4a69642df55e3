#!/bin/bash
# Pre-train LLaMA-7B on 4 nodes x 8 GPUs with FSDP2 (+ TP within a node if you set --tp).
# Submit with: sbatch examples/slurm.sh   (adjust partition, paths and the recipe to your cluster)
#SBATCH --job-name=camelid-llama2-7b
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=96
#SBATCH --time=72:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

DATA=${DATA:-/shared/data/llama-mixture}     # from: camelid data prepare --mixture ... --out $DATA
RUN=${RUN:-/shared/runs/llama2-7b}

head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export OMP_NUM_THREADS=8

# One torchrun per node; they meet at the rendezvous on the first node. --resume makes a requeued job
# continue from the newest complete checkpoint.
srun torchrun \
  --nnodes "$SLURM_NNODES" --nproc_per_node 8 \
  --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$head_node:29500" \
  -m camelid pretrain --config llama2-7b --out "$RUN" --resume \
  --set data.dir="$DATA" --set train.tp=1 --set train.micro_batch=2
