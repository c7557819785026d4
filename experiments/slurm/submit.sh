#!/bin/bash
# Submit a jointprune run to SLURM: sbatch experiments/slurm/submit.sh <setting.yaml>
# One task per GPU: Lightning maps SLURM_PROCID/SLURM_LOCALID to global/local ranks.
#SBATCH --job-name=jointprune
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=SIGUSR1@90
# (SIGUSR1 lets Lightning save a checkpoint and requeue before the time limit.)
set -euo pipefail
SETTING=${1:?usage: sbatch experiments/slurm/submit.sh <setting.yaml>}
srun jointprune fit --config "$SETTING" --config experiments/slurm/cluster.yaml --ckpt_path last
