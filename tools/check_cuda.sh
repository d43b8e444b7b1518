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
start=$(date +%s)
cargo clippy -p stylizer -p video-stylizer --all-targets "${profile[@]}" "${features[@]}" -- -D warnings
cargo build -p video-stylizer --bin video-stylizer "${profile[@]}" "${features[@]}"
echo "cuda build checked in $(( $(date +%s) - start )) s"
