#!/usr/bin/env bash
# Video-path overhead: identity `stylize` of a 1080p 10 s clip vs bare ffmpeg doing the same
# scale + libx265 crf 26 encode + audio copy, timed alternately in the same run (the machine
# is shared and noisy). Prints seconds and the ratio ours / ffmpeg, and the ratio against one
# ffmpeg doing the same RGB round trip as ours (the pipeline's own cost; target <= 1.05).
# Usage: bash tools/bench_video.sh [REPS] [MAX_RES...]   (default: 2 reps, 480p and 1080p)
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-2}; shift || true
RESES=("$@"); [ ${#RESES[@]} -gt 0 ] || RESES=(480p 1080p)
cargo build -q  # the dev profile optimises every crate (Cargo.toml)
BIN=target/debug/video-stylizer
DIR=$(mktemp -d); trap 'rm -rf "$DIR"' EXIT
ffmpeg -hide_banner -loglevel error -nostdin -f lavfi -i testsrc2=size=1920x1080:rate=25 \
  -f lavfi -i sine=frequency=440:duration=10 -t 10 -c:v libx264 -preset veryfast -crf 18 \
  -pix_fmt yuv420p -c:a aac "$DIR/in.mp4"
now() { date +%s.%N; }
for res in "${RESES[@]}"; do
  case $res in 480p) size=848:480 ;; 720p) size=1280:720 ;; *) size=1920:1080 ;; esac
  ours=0; bare=0; same=0
  for _ in $(seq "$REPS"); do
    t0=$(now)
    $BIN stylize "$DIR/in.mp4" --frame-stage identity --max-res "$res" -q --overwrite -o "$DIR/ours.mp4"
    t1=$(now)
    ffmpeg -hide_banner -loglevel error -nostdin -y -i "$DIR/in.mp4" -vf "scale=$size" \
      -c:v libx265 -crf 26 -x265-params log-level=error -pix_fmt yuv420p -c:a copy "$DIR/bare.mp4"
    t2=$(now)
    # The same pixel work as ours in one ffmpeg (full-chroma Lanczos to RGB, area back to
    # BT.709 4:2:0): what is left of the ratio is the pipeline's own cost.
    ffmpeg -hide_banner -loglevel error -nostdin -y -i "$DIR/in.mp4" \
      -vf "scale=$size:flags=lanczos+full_chroma_int,format=rgb24,scale=out_color_matrix=bt709:out_range=tv:flags=area+accurate_rnd+full_chroma_int,format=yuv420p" \
      -c:v libx265 -crf 26 -x265-params log-level=error -c:a copy "$DIR/same.mp4"
    t3=$(now)
    ours=$(awk "BEGIN{print $ours + $t1 - $t0}"); bare=$(awk "BEGIN{print $bare + $t2 - $t1}")
    same=$(awk "BEGIN{print $same + $t3 - $t2}")
  done
  awk -v r="$res" -v o="$ours" -v b="$bare" -v s="$same" -v n="$REPS" 'BEGIN{printf "%s (mean of %d): ours %.2f s | bare ffmpeg scale %.2f s, ratio %.3f | ffmpeg with our RGB conversions %.2f s, ratio %.3f\n", r, n, o/n, b/n, o/b, s/n, o/s}'
done
