#!/usr/bin/env bash
# The whole test suite (the README's test command): set-up if needed, then every test of the
# workspace (the dev profile optimises every crate: the model tests run real networks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cargo test --workspace -- "$@"
