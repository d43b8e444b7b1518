#!/usr/bin/env bash
# The CUDA build, checked without a GPU: the CUDA 13.0 toolkit from PyPI wheels
# (tools/setup_cuda.sh, cached outside the clone), clippy on every target with
# `--features cuda`, and the CLI binary built with it (linked against the wheels' libraries
# and a libcuda stub; the real libcuda.so.1 comes with the driver on a GPU machine).
# Called by .ci/run; PROFILE=release builds the binary that tools/gpu_check.sh runs.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash tools/setup_cuda.sh)"
features=(--features stylizer/cuda,video-stylizer/cuda)
start=$(date +%s)
cargo clippy -p stylizer -p video-stylizer --all-targets "${features[@]}" -- -D warnings
profile=()
[ "${PROFILE:-dev}" = release ] && profile=(--release)
cargo build -p video-stylizer --bin video-stylizer "${profile[@]}" "${features[@]}"
echo "cuda build checked in $(( $(date +%s) - start )) s"
