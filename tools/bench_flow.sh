#!/usr/bin/env bash
# Our DIS optical flow (crates/stylizer/src/temporal/flow.rs, a port of OpenCV's dis_flow.cpp;
# Kroeger et al. 2016) against OpenCV's cv::DISOpticalFlow on the same pair of frames, both on
# THREADS threads (default 2): seconds per preset, the ratio ours/OpenCV, and the mean EPE
# between the two fields.
#
#   bash tools/bench_flow.sh [VIDEO] [FRAME] [WxH]     (default: bigbuckbunny.mp4 40 854x480)
#
# OpenCV runs from a throwaway venv (FLOW_VENV, default /tmp/flowvenv), created on first use with
# the versions pinned in tools/reference/make_flow_fixtures.py.
set -euo pipefail
cd "$(dirname "$0")/.."

video=${1:-tests/data/bigbuckbunny.mp4}
frame=${2:-40}
size=${3:-854x480}
threads=${THREADS:-2}
runs=${RUNS:-5}
venv=${FLOW_VENV:-/tmp/flowvenv}
w=${size%x*}
h=${size#*x}

[ -f "$video" ] || { echo "$video missing: run bash tools/setup.sh" >&2; exit 1; }
if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv…"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q opencv-python-headless==5.0.0.93 numpy==2.4.6 safetensors==0.8.0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for i in 0 1; do
  ffmpeg -v error -i "$video" -vf "select=eq(n\\,$((frame + i))),scale=$w:$h" -frames:v 1 \
    -f rawvideo -pix_fmt rgb24 "$tmp/f$i.rgb"
done

# OpenCV first: it also leaves its flows for the EPE comparison.
"$venv/bin/python" - "$tmp" "$w" "$h" "$threads" "$runs" > "$tmp/opencv.json" <<'EOF'
import json, sys, time
import cv2, numpy as np
d, w, h, threads, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
cv2.setNumThreads(threads)
g = [cv2.cvtColor(np.fromfile(f"{d}/f{i}.rgb", np.uint8).reshape(h, w, 3), cv2.COLOR_RGB2GRAY) for i in (0, 1)]
out = {}
for name, p in [("ultrafast", cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST), ("fast", cv2.DISOPTICAL_FLOW_PRESET_FAST),
                ("medium", cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)]:
    dis = cv2.DISOpticalFlow_create(p)
    flow = dis.calc(g[0], g[1], None)  # warm-up
    flow.astype("<f4").tofile(f"{d}/opencv_{name}.f32")
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        dis.calc(g[0], g[1], None)
        times.append(time.perf_counter() - t)
    out[name] = sorted(times)[len(times) // 2]
print(json.dumps({"opencv": cv2.__version__, "threads": cv2.getNumThreads(), "seconds": out}))
EOF

cargo build -q --release -p stylizer --example flow_bench
RAYON_NUM_THREADS=$threads target/release/examples/flow_bench --rgb "$tmp/f0.rgb" "$tmp/f1.rgb" \
  --size "$size" --runs "$runs" --opencv "$tmp" | tee "$tmp/ours.txt"

python3 - "$tmp/opencv.json" "$tmp/ours.txt" "$video" "$frame" <<'EOF'
import json, sys
cv = json.load(open(sys.argv[1]))
ours = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
print(f"\n{sys.argv[3]} frames {sys.argv[4]},{int(sys.argv[4]) + 1}; OpenCV {cv['opencv']} on {cv['threads']} threads")
print(f"{'preset':10} {'ours s':>9} {'OpenCV s':>9} {'ours/OpenCV':>12} {'EPE vs OpenCV':>14}")
for p in ("ultrafast", "fast", "medium"):
    o, c = ours[p]["seconds"], cv["seconds"][p]
    print(f"{p:10} {o:9.4f} {c:9.4f} {o / c:12.2f} {ours[p]['epe_vs_opencv']:14.5f}")
EOF
