#!/usr/bin/env bash
# Stylize one video as a Slurm job array: N shares render segments into a shared work folder,
# then a dependent job joins them. Submit from a login node:
#   sbatch --export=ALL,INPUT=/shared/in.mp4,PROMPT="anime style" docs/slurm/stylize-array.sh
# Optional: OUTPUT (default <input>_stylized.mp4), SEED (default 1), SHARES (default 16),
# EXTRA (more stylize flags, e.g. "--upscale --max-res 720p").
#SBATCH --job-name=stylize
#SBATCH --array=1-16
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=24:00:00
#SBATCH --output=stylize-%A_%a.log
set -euo pipefail
: "${INPUT:?set INPUT to the video on the shared file system}"
: "${PROMPT:?set PROMPT}"
SHARES=${SHARES:-${SLURM_ARRAY_TASK_COUNT:-16}}
SEED=${SEED:-1}
OUTPUT=${OUTPUT:-${INPUT%.*}_stylized.mp4}

if [ "${1:-}" = join ]; then
  exec video-stylizer join "$OUTPUT.work"
fi

# The first task queues the join, to run only when every share has succeeded.
if [ "$SLURM_ARRAY_TASK_ID" = "${SLURM_ARRAY_TASK_MIN:-1}" ]; then
  sbatch --dependency="afterok:$SLURM_ARRAY_JOB_ID" --job-name=stylize-join \
    --gres=none --cpus-per-task=2 --mem=4G --time=1:00:00 --array= \
    --export=ALL,INPUT="$INPUT",OUTPUT="$OUTPUT" "$0" join
fi

# Non-terminal output: progress is printed as plain lines every few seconds.
# shellcheck disable=SC2086 # EXTRA is a list of flags
video-stylizer stylize "$INPUT" --prompt "$PROMPT" --seed "$SEED" -o "$OUTPUT" \
  --device cuda --segment "$SLURM_ARRAY_TASK_ID/$SHARES" ${EXTRA:-}
