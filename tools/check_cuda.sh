#!/usr/bin/env bash
# The CUDA build, checked without a GPU: the CUDA 13.0 toolkit from PyPI wheels
# (tools/setup_cuda.sh, cached outside the clone), clippy on every target with
# `--features cuda`, and the CLI binary built with it (linked against the wheels' libraries
# and a libcuda stub; the real libcuda.so.1 comes with the driver on a GPU machine).
# Called by .ci/run, in the cuda-check profile (nothing optimised: linted and linked, not
# run); PROFILE=release builds the binary to run on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash tools/setup_cuda.sh)"
features=(--features stylizer/cuda,video-stylizer/cuda)
profile=(--profile "${PROFILE:-cuda-check}")
# The check's build lives outside the clone, as the toolkit does: CI's clean clones then
# rebuild only what changed (candle-kernels' nvcc run alone is most of a cold check).
# A release build stays in target/, where the binary is carried from.
if [ "${PROFILE:-cuda-check}" = cuda-check ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/video-stylizer/target-cuda}"
fi
start=$(date +%s)
cargo clippy -p stylizer -p video-stylizer --all-targets "${profile[@]}" "${features[@]}" -- -D warnings
cargo build -p video-stylizer --bin video-stylizer "${profile[@]}" "${features[@]}"
echo "cuda build checked in $(( $(date +%s) - start )) s"
