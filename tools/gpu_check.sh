#!/usr/bin/env bash
# The CUDA build checked on a real GPU, in one call of the device machine (issue 15 §4).
#
#   bash tools/gpu_check.sh pack   here: builds the release CUDA binaries (the CLI and the
#                                  parity tests) and packs them, xz'd, into target/gpu/ (git-
#                                  ignored; carry it: `run` with carry ["target/gpu"])
#   bash tools/gpu_check.sh        on the GPU machine (nothing is built there): the parity
#                                  replays on CUDA (f32 on candle's ops, f16, bf16 text encoders),
#                                  then a real clip stylized with the tiny model on --device cuda,
#                                  then with an SD-2-base-sized random model (tools/gpu/
#                                  random_model.py): seconds per 480p frame, and a run under
#                                  --max-vram 8; each with the peak GPU memory; prints a summary,
#                                  exits non-zero if anything failed.
#
# GPU_CHECK_DEVICE=cpu runs the second form on this machine with CPU binaries (PROFILE=dev
# pack; PYTHON=tools/reference/.cache/venv/bin/python): a rehearsal of the script itself,
# since device time is minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
PACK=target/gpu

if [ "${1:-}" = pack ]; then
  set -e
  features=()
  if [ "${GPU_CHECK_DEVICE:-cuda}" != cpu ]; then
    eval "$(bash tools/setup_cuda.sh)"
    features=(--features stylizer/cuda,video-stylizer/cuda)
  fi
  # Builds with cargo's arguments and prints the path of the executable of target $1.
  exe() {
    local target=$1; shift
    cargo "$@" --profile "${PROFILE:-release}" "${features[@]}" --message-format json |
      python3 -c 'import json,sys; t=sys.argv[1]; print(next(m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m["target"]["name"] == t and m.get("executable")))' "$target"
  }
  cli=$(exe video-stylizer build -p video-stylizer --bin video-stylizer)
  parity=$(exe parity test --workspace --test parity --no-run)
  rm -rf "$PACK" && mkdir -p "$PACK"
  xz -T0 -6 -c "$cli" >"$PACK/video-stylizer.xz"
  xz -T0 -6 -c "$parity" >"$PACK/parity.xz"
  # What the checks read that git does not track (tests/data is fetched by setup.sh).
  cp tests/data/bigbuckbunny.mp4 tests/data/esrgan/realesr-animevideov3-x4.* "$PACK/"
  du -ch "$PACK"/* | tail -1
  exit 0
fi

DEVICE=${GPU_CHECK_DEVICE:-cuda}
PYTHON=${PYTHON:-python3}  # one with PyTorch (there: the one whose nvidia wheels serve CUDA)
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
failed=()
step() { echo; echo "=== $*"; }
check() { local name=$1; shift; "$@" || failed+=("$name"); }

for b in video-stylizer parity; do
  xz -dc "$PACK/$b.xz" >"$WORK/$b" && chmod +x "$WORK/$b" || { echo "missing $PACK/$b.xz: run 'bash tools/gpu_check.sh pack' here and carry $PACK" >&2; exit 2; }
done
mkdir -p tests/data/esrgan
cp -n "$PACK/bigbuckbunny.mp4" tests/data/ 2>/dev/null || true
cp -n "$PACK"/realesr-animevideov3-x4.* tests/data/esrgan/ 2>/dev/null || true

if [ "$DEVICE" != cpu ]; then
  # The CUDA 13 libraries come with PyTorch's wheels there; libcuda.so.1 with the driver.
  libs=$("$PYTHON" -c 'import nvidia,glob,os;print(":".join(sorted({os.path.dirname(p) for d in nvidia.__path__ for p in glob.glob(os.path.join(d,"*","lib","lib*.so*"))})))' 2>/dev/null || true)
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  ldd "$WORK/video-stylizer" | grep -E "cuda|cublas|curand" || true
fi

# Peak GPU memory of a command: nvidia-smi polled every 100 ms while it runs.
peak() {
  local log="$WORK/mem.$RANDOM"
  if [ "$DEVICE" = cpu ]; then "$@"; return; fi
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$log" &
  local poll=$! rc=0
  "$@" || rc=$?
  kill "$poll" 2>/dev/null; wait "$poll" 2>/dev/null
  echo "peak GPU memory: $(sort -n "$log" | tail -1) MiB"
  return $rc
}

step "parity replays on $DEVICE (f32 on candle's ops; f16 and bf16 in half_precision::)"
# RealESRGAN_x4plus (33 MB) does not travel: the two tests that need it are skipped.
check parity peak env VIDEO_STYLIZER_TEST_DEVICE="$DEVICE" "$WORK/parity" --test-threads 1 \
  --skip real_weights_match_pytorch_golden_64 --skip tiled_matches_whole_frame_on_a_photo

step "a real clip (1 s) stylized with the tiny model on --device $DEVICE, f32 and f16"
if command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null; then
  ffmpeg -hide_banner -loglevel error -nostdin -i tests/data/bigbuckbunny.mp4 -t 1 -c copy "$WORK/in.mp4"
  for dtype in f32 f16; do
    check "stylize-$dtype" peak "$WORK/video-stylizer" stylize "$WORK/in.mp4" \
      --model-id tests/fixtures/sd/tiny-sd2 --prompt "anime style" --strength 0.6 --steps 4 \
      --max-res 480p --device "$DEVICE" --dtype "$dtype" --seed 1 -o "$WORK/clip-$dtype.mp4"
    check "probe-$dtype" ffprobe -v error -show_entries stream=codec_name,width,height,nb_frames \
      -of csv=p=0 "$WORK/clip-$dtype.mp4"
  done
else
  echo "no ffmpeg/ffprobe on this machine: the clip cannot be stylized"
  failed+=(no-ffmpeg)
fi

step "an SD-2-base-sized model (random weights of the real shapes) on --device $DEVICE"
# Time and memory do not depend on the values; the model (2.6 GB in f16) is drawn there with
# PyTorch, since it cannot travel.
# At 480p: seconds per frame from --preview (model loading excluded), then 0.5 s of video in
# full under --max-vram 8, the budget of the product's 8 GB target.
if ! command -v ffmpeg >/dev/null; then
  failed+=(sd2-no-ffmpeg)
elif ! "$PYTHON" -c 'import torch' 2>/dev/null; then
  echo "no PyTorch for $PYTHON: the random model cannot be drawn"
  failed+=(sd2-no-torch)
else
  # A CPU rehearsal takes minutes per 480p frame (and f16 is slow there): a thumbnail-sized
  # clip in f32.
  # (--max-vram is refused on a CPU run.)
  dtype=f16 clip=(-t 0.5) budget=(--max-vram 8)
  [ "$DEVICE" = cpu ] && dtype=f32 clip=(-vf scale=128:72 -t 0.2) budget=()
  ffmpeg -hide_banner -loglevel error -nostdin -i tests/data/bigbuckbunny.mp4 "${clip[@]}" \
    -c:v libx264 -c:a copy "$WORK/sd2-in.mp4"
  check sd2-draw "$PYTHON" tools/gpu/random_model.py build tools/gpu/sd2-base "$WORK/sd2" --dtype f16
  sd2=("$WORK/video-stylizer" stylize "$WORK/sd2-in.mp4" --model-id "$WORK/sd2" \
    --prompt "anime style" --max-res 480p --device "$DEVICE" --dtype "$dtype" --seed 1)
  check sd2-preview peak "${sd2[@]}" --preview 4 -o "$WORK/sd2-preview.mp4"
  check sd2-8gb peak "${sd2[@]}" "${budget[@]}" -o "$WORK/sd2.mp4"
  check sd2-probe ffprobe -v error -show_entries stream=codec_name,width,height,nb_frames \
    -of csv=p=0 "$WORK/sd2.mp4"
fi

step "summary"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all GPU checks passed on $DEVICE"
