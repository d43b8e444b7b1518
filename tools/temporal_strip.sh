#!/usr/bin/env bash
# The README's before/after figure: four consecutive frames of a clip restyled with
# `--consistency none` (top row) and the default `cross-frame+flow` (bottom row), cropped.
#
#   bash tools/temporal_strip.sh [CLIP] [MODEL] [OUT]
#   (defaults: tests/data/bikes.mp4, the tiny SD-2 test model, docs/temporal_strip.jpg)
# Env: FIRST (first frame shown, 8), CROP (ffmpeg crop w:h:x:y, 200:150:300:160),
# BIN (default target/release/video-stylizer).
set -euo pipefail
cd "$(dirname "$0")/.."

clip=${1:-tests/data/bikes.mp4}
model=${2:-tests/fixtures/sd/tiny-sd2}
out=${3:-docs/temporal_strip.jpg}
first=${FIRST:-8}
crop=${CROP:-200:150:300:160}
bin=${BIN:-target/release/video-stylizer}
[ -x "$bin" ] || cargo build --release -p video-stylizer

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ffmpeg -v error -i "$clip" -an -frames:v $((first + 4)) -c:v libx264 -qp 0 "$tmp/in.mkv"
for mode in none cross-frame+flow; do
  "$bin" stylize "$tmp/in.mkv" -p "an oil painting" -m "$model" -s 0.5 --steps 4 --seed 1 \
    --crf 12 --quiet --consistency "$mode" -o "$tmp/$mode.mkv" >/dev/null
  # One row: frames first..first+3, cropped, side by side.
  ffmpeg -v error -i "$tmp/$mode.mkv" -vf "select='between(n,$first,$((first + 3)))',crop=$crop,tile=4x1" \
    -frames:v 1 "$tmp/$mode.png"
done
ffmpeg -v error -y -i "$tmp/none.png" -i "$tmp/cross-frame+flow.png" -filter_complex vstack -q:v 3 "$out"
echo "wrote $out"
