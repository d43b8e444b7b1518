#!/usr/bin/env bash
# Video-path overhead: identity `stylize` of a 1080p 10 s clip against ffmpeg, timed in
# interleaved rounds in the same run (the machine is shared and noisy: a round's order
# alternates, and the figure is the median of the rounds' ratios, with their range).
#   ours  our tool (probe, decode | stage | encode, join with the audio)
#   same  one ffmpeg doing the same pixel work as ours (the pipeline's own cost; target <= 1.05)
#   pipe  that work split over two ffmpegs joined by an rgb24 pipe, as ours is: the floor for
#         any decoder | encoder design
#   bare  one ffmpeg scaling straight in YUV (what a user would otherwise run)
# Usage: bash tools/bench_video.sh [ROUNDS] [MAX_RES...]   (default: 5 rounds, 480p and 1080p)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}; shift || true
RESES=("$@"); [ ${#RESES[@]} -gt 0 ] || RESES=(480p 1080p)
cargo build -q  # the dev profile optimises every crate (Cargo.toml)
BIN=target/debug/video-stylizer
DIR=$(mktemp -d); trap 'rm -rf "$DIR"' EXIT
FF=(ffmpeg -hide_banner -loglevel error -nostdin -y)
"${FF[@]}" -f lavfi -i testsrc2=size=1920x1080:rate=25 -f lavfi -i sine=frequency=440:duration=10 \
  -t 10 -c:v libx264 -preset veryfast -crf 18 -pix_fmt yuv420p -c:a aac "$DIR/in.mp4"
X265=(-c:v libx265 -crf 26 -x265-params log-level=error)
# Our conversions: full-chroma Lanczos to RGB, area back to BT.709 limited 4:2:0.
TO_YUV="scale=out_color_matrix=bt709:out_range=tv:flags=area+accurate_rnd+full_chroma_int,format=yuv420p"
now() { date +%s.%N; }
for res in "${RESES[@]}"; do
  case $res in 480p) w=848 h=480 ;; 720p) w=1280 h=720 ;; *) w=1920 h=1080 ;; esac
  TO_RGB="scale=$w:$h:flags=lanczos+full_chroma_int"
  run() {
    case $1 in
      ours) $BIN stylize "$DIR/in.mp4" --frame-stage identity --max-res "$res" -q --overwrite \
              -o "$DIR/ours.mp4" >/dev/null ;;
      same) "${FF[@]}" -i "$DIR/in.mp4" -vf "$TO_RGB,format=rgb24,$TO_YUV" "${X265[@]}" -c:a copy \
              "$DIR/same.mp4" ;;
      pipe) "${FF[@]}" -i "$DIR/in.mp4" -vf "$TO_RGB" -an -f rawvideo -pix_fmt rgb24 - |
              "${FF[@]}" -f rawvideo -pix_fmt rgb24 -s "${w}x$h" -framerate 25 -i - -i "$DIR/in.mp4" \
              -map 0:v -map 1:a -vf "$TO_YUV" "${X265[@]}" -c:a copy "$DIR/pipe.mp4" ;;
      bare) "${FF[@]}" -i "$DIR/in.mp4" -vf "scale=$w:$h" "${X265[@]}" -pix_fmt yuv420p -c:a copy \
              "$DIR/bare.mp4" ;;
    esac
  }
  : >"$DIR/times"
  for r in $(seq "$ROUNDS"); do
    order=(ours same pipe bare); [ $((r % 2)) = 0 ] && order=(bare pipe same ours)
    for k in "${order[@]}"; do
      t0=$(now); run "$k"; t1=$(now)
      echo "$r $k $(awk "BEGIN{print $t1 - $t0}")" >>"$DIR/times"
    done
  done
  python3 - "$res" "$DIR/times" <<'EOF'
import statistics, sys
res, path = sys.argv[1], sys.argv[2]
t = {}
for line in open(path):
    r, k, s = line.split()
    t.setdefault(k, {})[int(r)] = float(s)
rounds = sorted(t["ours"])
med = {k: statistics.median(v.values()) for k, v in t.items()}
print(f"{res} ({len(rounds)} rounds, median s): ours {med['ours']:.2f} | same {med['same']:.2f}"
      f" | pipe {med['pipe']:.2f} | bare {med['bare']:.2f}")
for a, b in [("ours", "same"), ("pipe", "same"), ("ours", "pipe"), ("ours", "bare")]:
    q = sorted(t[a][r] / t[b][r] for r in rounds)
    print(f"  {a}/{b}: median {statistics.median(q):.3f} (range {q[0]:.3f}-{q[-1]:.3f})")
EOF
done
