#!/usr/bin/env bash
# Fuzz every file parser a user can point the tool at (fuzz/, cargo-fuzz + libFuzzer, nightly):
# each target runs SECONDS (default 60) from a corpus seeded with the repo's real and tiny
# fixtures. Limits per input mirror what the tool promises: 2 GB of memory, 10 s.
# Findings land in fuzz/artifacts/<target>/; fix them, then commit the input to
# fuzz/regressions/<target>/ where the stable test suite replays it
# (crates/stylizer/tests/fuzz_regressions.rs).
# Usage: bash tools/fuzz.sh [SECONDS] [TARGET...]    (CI: bash tools/fuzz.sh 30)
set -euo pipefail
cd "$(dirname "$0")/.."
EACH=${1:-60}; shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(safetensors checkpoint pickle ncnn configs model_folder tokenizer image)
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: no nightly Rust toolchain on this machine: fuzzing skipped (fuzz/regressions still replay in the tests)"
  exit 0
fi
command -v cargo-fuzz >/dev/null || cargo +stable install cargo-fuzz --locked -q

# Seeds, made from the fixtures every run (the corpus itself is not committed).
C=fuzz/corpus
cut=$'\n--8<--\n'
mkdir -p "$C"/{safetensors,checkpoint,pickle,ncnn,configs,model_folder,tokenizer,image}
cp tests/fixtures/esrgan/tiny/*.safetensors "$C/safetensors/"
cp tests/fixtures/esrgan/tiny/*.pth "$C/checkpoint/"
for m in rrdb_x2 srvgg_x4; do  # the pickle program and its first storage
  command -v python3 >/dev/null || break
  python3 - "tests/fixtures/esrgan/tiny/$m.pth" "$C/pickle/$m" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
data0 = next((n for n in z.namelist() if n.endswith("data/0")), None)
open(sys.argv[2], "wb").write(z.read(pkl) + b"\n--8<--\n" + (z.read(data0) if data0 else b""))
PY
done
for m in rrdb_x2 srvgg_x4; do
  { cat "tests/fixtures/esrgan/tiny/$m.param"; printf '%s' "$cut"; cat "tests/fixtures/esrgan/tiny/$m.bin"; } > "$C/ncnn/$m"
done
for v in tiny-sd tiny-sd2; do
  for f in unet/config.json vae/config.json text_encoder/config.json scheduler/scheduler_config.json; do
    cp "tests/fixtures/sd/$v/$f" "$C/configs/$v-${f//\//-}"
  done
  t=tests/fixtures/sd/$v/tokenizer
  { cat "$t/tokenizer_config.json"; printf '%s' "$cut"; cat "$t/vocab.json"; printf '%s' "$cut"; cat "$t/merges.txt"; } > "$C/tokenizer/$v"
  m=tests/fixtures/sd/$v
  { cat "$m/unet/config.json"; printf '%s' "$cut"; cat "$m/vae/config.json"; printf '%s' "$cut"
    cat "$m/text_encoder/config.json"; printf '%s' "$cut"; cat "$m/scheduler/scheduler_config.json"
    printf '%s' "$cut"; cat "$t/vocab.json"; printf '%s' "$cut"; cat "$t/merges.txt"; } > "$C/model_folder/$v"
done
# A folder of two models: tiny SD-2's UNet with tiny SD's text encoder.
{ cat tests/fixtures/sd/tiny-sd2/unet/config.json; printf '%s' "$cut"; cat tests/fixtures/sd/tiny-sd2/vae/config.json
  printf '%s' "$cut"; cat tests/fixtures/sd/tiny-sd/text_encoder/config.json; printf '%s' "$cut"
  cat tests/fixtures/sd/tiny-sd2/scheduler/scheduler_config.json; printf '%s' "$cut"
  cat tests/fixtures/sd/tiny-sd/tokenizer/vocab.json; printf '%s' "$cut"; cat tests/fixtures/sd/tiny-sd/tokenizer/merges.txt
} > "$C/model_folder/mixed"
# ControlNet and tiny-VAE configs; the single-file ControlNet (bare keys) as a weight file.
cp tests/fixtures/sd/controlnet/tiny-sd2-a/config.json "$C/configs/controlnet-config.json"
cp tests/fixtures/sd/taesd/config.json "$C/configs/taesd-config.json"
# AnimateDiff: a motion adapter config, and an original-layout motion module (pickled).
cp tests/fixtures/sd/motion/tiny-v2/config.json "$C/configs/motion-config.json"
cp tests/fixtures/sd/motion/tiny-v2.ckpt "$C/checkpoint/motion-v2.ckpt"
cp tests/fixtures/sd/lora/peft.safetensors "$C/safetensors/lora-peft.safetensors"
{ printf '\0'; cat tests/fixtures/esrgan/photo_160x120.png; } > "$C/image/photo.png"

# The instrumented build (all of candle again) lives outside the clone: CI's clean clones
# then rebuild only what changed.
TARGET_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/video-stylizer/target-fuzz"
cd fuzz
cargo +nightly fuzz build -O --debug-assertions --target-dir "$TARGET_DIR"
for t in "${TARGETS[@]}"; do
  echo "== $t (${EACH}s)"
  cargo +nightly fuzz run -O --debug-assertions --target-dir "$TARGET_DIR" "$t" "corpus/$t" -- \
    -max_total_time="$EACH" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
    -max_len=262144 -print_final_stats=1 2>&1 | grep -E "^(stat::|Done|==|SUMMARY|.*(panicked|ERROR|Test unit written))" || true
  if ls "artifacts/$t"/* >/dev/null 2>&1; then
    echo "fuzz: $t has findings in fuzz/artifacts/$t" >&2
    exit 1
  fi
done
