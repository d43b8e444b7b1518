#!/usr/bin/env bash
# The whole test suite (the README's test command): set-up if needed, then every test of the
# workspace (the dev profile optimises every crate: the model tests run real networks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cargo test --workspace -- "$@"
# Every file parser under libFuzzer for a short while (skipped without nightly Rust;
# FUZZ_SECONDS=0 skips it, a larger value is the long run).
if [ "${FUZZ_SECONDS:-30}" != 0 ]; then
  bash tools/fuzz.sh "${FUZZ_SECONDS:-30}"
fi
