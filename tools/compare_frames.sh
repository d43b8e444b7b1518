#!/usr/bin/env bash
# Same frames before and after a restructuring: builds BASE (a commit) and the working tree,
# renders a short cut of a real clip in every mode with two seeds, and compares the exact RGB
# frames each run sends to its encoder.
#
#   bash tools/compare_frames.sh [BASE]        # BASE defaults to b556e1e (x0 flow fusion with lag, --noise)
#
# Mode `rerender` (--consistency rerender) is not in the default list: bases before it lack it;
# add it with MODES for a base from 6809458 on.
#
# The frames are caught before the encoder without a hook in the code, so any commit can be the
# base: $FFMPEG (which the tool calls instead of `ffmpeg` when set) is a wrapper that tees the
# encoder's rgb24 input (`-f rawvideo -pix_fmt rgb24 … -i -`) into a file and hashes it.
# Env: MODES (a subset of the mode names below), SEEDS (default "1 2"), KEEP=1 keeps the work
# folder. The base binary is cached in ~/.cache/video-stylizer/compare-frames/; the base is
# built in a worktree there with this checkout's target folder (the dependencies are shared).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
base=${1:-b556e1e}
seeds=${SEEDS:-"1 2"}
modes=${MODES:-"none cross-frame flow cross-frame+flow keyframes keyframes-alone anchor+self flow-fusion noise-per-frame noise-warp controlnet animatediff lora tiny-vae fast-lcm fast-turbo upscale"}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/video-stylizer/compare-frames
mkdir -p "$cache/bin"
bash tools/setup.sh >/dev/null

rev=$(git rev-parse --short=12 "$base^{commit}")
base_bin=$cache/bin/video-stylizer-$rev
if [ ! -x "$base_bin" ]; then
  src=$cache/src-$rev
  [ -d "$src" ] || git worktree add --quiet --detach "$src" "$rev"
  echo "building $rev…" >&2
  (cd "$src" && CARGO_TARGET_DIR="$root/target" cargo build -q -p video-stylizer)
  cp target/debug/video-stylizer "$base_bin"
  git worktree remove --force "$src"
fi
echo "building the working tree…" >&2
cargo build -q -p video-stylizer # relinks target/debug/video-stylizer from this tree
cp target/debug/video-stylizer "$cache/bin/video-stylizer-worktree"
new_bin=$cache/bin/video-stylizer-worktree

work=$(mktemp -d)
[ -n "${KEEP:-}" ] && echo "work folder: $work" >&2 || trap 'rm -rf "$work"' EXIT
real_ffmpeg=$(command -v ffmpeg)
cat >"$work/ffmpeg" <<EOF
#!/usr/bin/env bash
# The encoder's call reads rgb24 frames from stdin: keep a copy of exactly what it was sent.
args=" \$* "
if [[ \$args == *" -pix_fmt rgb24 "*" -i - "* ]]; then
  tee -a "\$FRAMES_OUT" | "$real_ffmpeg" "\$@"
  exit \${PIPESTATUS[1]}
fi
exec "$real_ffmpeg" "\$@"
EOF
chmod +x "$work/ffmpeg"

fx=tests/fixtures/sd
# 0.4 s of the real clip at 80×48: 10 frames, one segment, with its audio.
clip=$work/in.mp4
ffmpeg -v error -ss 2 -i tests/data/bigbuckbunny.mp4 -t 0.4 -vf scale=80:48 -c:v libx264 \
  -pix_fmt yuv420p -c:a aac "$clip"
# An offline hub cache holding the tiny SD-1 LoRA as the LCM-LoRA, and an SD-Turbo-like model
# (tiny SD-2 with trailing timesteps), as the --fast test makes them.
hub=$work/hub/models--latent-consistency--lcm-lora-sdv1-5
commit=0123456789abcdef0123456789abcdef01234567
mkdir -p "$hub/refs" "$hub/snapshots/$commit"
echo -n $commit >"$hub/refs/main"
cp $fx/lora/kohya.safetensors "$hub/snapshots/$commit/pytorch_lora_weights.safetensors"
cp -r $fx/tiny-sd2 "$work/turbo"
sed -i 's/"leading"/"trailing"/' "$work/turbo/scheduler/scheduler_config.json"

# The LoRA fixtures are SD-1 ones (tiny-sd); TAESD fits tiny-sd2's VAE. --fast picks its own steps.
mode_args() {
  case $1 in
    none | cross-frame | flow | cross-frame+flow) echo "-m $fx/tiny-sd2 --steps 4 --consistency $1" ;;
    keyframes) echo "-m $fx/tiny-sd2 --steps 4 --keyframe-every 3" ;;
    keyframes-alone) echo "-m $fx/tiny-sd2 --steps 4 --keyframe-every 3 --consistency none" ;;
    anchor+self) echo "-m $fx/tiny-sd2 --steps 4 --consistency cross-frame --cross-frame-keys anchor+self" ;;
    flow-fusion) echo "-m $fx/tiny-sd2 --steps 4 --consistency flow --flow-fusion 0.3,0.7" ;;
    noise-per-frame) echo "-m $fx/tiny-sd2 --steps 4 --noise-per-frame" ;;
    noise-warp) echo "-m $fx/tiny-sd2 --steps 4 --noise warp" ;;
    rerender) echo "-m $fx/tiny-sd2 --steps 4 --strength 0.8 --consistency rerender" ;;
    controlnet) echo "-m $fx/tiny-sd2 --steps 4 -c $fx/controlnet/tiny-sd2-a" ;;
    animatediff) echo "-m $fx/tiny-sd --steps 4 --animatediff --motion-adapter $fx/motion/tiny-v2 --context-length 4 --context-overlap 2" ;;
    lora) echo "-m $fx/tiny-sd --steps 4 --lora $fx/lora/kohya.safetensors:0.8 --lora $fx/lora/peft.safetensors" ;;
    tiny-vae) echo "-m $fx/tiny-sd2 --steps 4 --vae $fx/taesd" ;;
    fast-lcm) echo "-m $fx/tiny-sd --fast --vae full" ;;
    fast-turbo) echo "-m $work/turbo --fast --vae $fx/taesd" ;;
    upscale) echo "-m $fx/tiny-sd2 --steps 4 --upscale --upscale-to x4 --upscale-model tests/data/esrgan/realesr-animevideov3-x4.param" ;;
    *) echo "unknown mode $1" >&2; exit 2 ;;
  esac
}

render() { # BIN MODE SEED → prints the frame count and the hash of the frames sent
  local bin=$1 mode=$2 seed=$3 tag
  tag=$(basename "$bin").$mode.$seed
  rm -f "$work/$tag.rgb"
  # shellcheck disable=SC2046
  if ! FFMPEG="$work/ffmpeg" FRAMES_OUT="$work/$tag.rgb" HF_HUB_CACHE="$work/hub" HF_HUB_OFFLINE=1 \
    "$bin" stylize "$clip" -p "a watercolor painting" --seed "$seed" --quiet \
    -o "$work/$tag.mkv" $(mode_args "$mode") 2>"$work/$tag.err"; then
    echo "FAILED $(tail -1 "$work/$tag.err")"
    return
  fi
  echo "$(stat -c %s "$work/$tag.rgb") $(sha256sum <"$work/$tag.rgb" | cut -c1-16)"
}

printf '%-16s %4s %6s %9s  %s\n' mode seed frames identical "sha256 (first 16)"
status=0
for mode in $modes; do
  for seed in $seeds; do
    read -r bytes_a hash_a <<<"$(render "$base_bin" "$mode" "$seed")"
    read -r bytes_b hash_b <<<"$(render "$new_bin" "$mode" "$seed")"
    same=no
    if [ "$bytes_a" != FAILED ] && [ "$bytes_a $hash_a" = "$bytes_b $hash_b" ]; then same=yes; fi
    [ $same = yes ] || status=1
    # Every mode writes 80×48 rgb24 frames, but the upscale writes 320×192.
    frame=$((80 * 48 * 3)); [ "$mode" = upscale ] && frame=$((320 * 192 * 3))
    frames=$([ "$bytes_a" = FAILED ] && echo "-" || echo $((bytes_a / frame)))
    printf '%-16s %4s %6s %9s  %s %s\n' "$mode" "$seed" "$frames" $same "$hash_a" \
      "$([ $same = yes ] || echo "≠ $bytes_b $hash_b")"
  done
done
exit $status
