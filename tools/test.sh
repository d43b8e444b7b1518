#!/usr/bin/env bash
# The whole test suite (the README's test command): set-up if needed, then every test of the
# workspace (the dev profile optimises every crate: the model tests run real networks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cargo test --workspace -- "$@"
# The parity tests again on candle's own ops, the path CUDA and Metal run, at the same
# tolerances (the upscaler's tests compare that path already: forward_candle; f16 and bf16
# are half_precision). `--workspace`, not `-p stylizer`: the same features as above, so
# nothing is built again.
VIDEO_STYLIZER_CANDLE_OPS=1 cargo test --workspace --test parity -- "$@" sd_models:: \
  img2img_parity:: controlnet:: animatediff:: taesd:: lora:: cross_frame_parity:: rerender:: stream::
# Every file parser under libFuzzer for a short while (skipped without nightly Rust;
# FUZZ_SECONDS=0 skips it, a larger value is the long run).
if [ "${FUZZ_SECONDS:-30}" != 0 ]; then
  bash tools/fuzz.sh "${FUZZ_SECONDS:-30}"
fi
