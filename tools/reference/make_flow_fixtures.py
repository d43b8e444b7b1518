#!/usr/bin/env python3
"""Fixtures for the Rust DIS optical flow (crates/stylizer/src/temporal/flow.rs, tests/flow.rs).

The flow is a port of OpenCV's DISOpticalFlow (modules/video/src/dis_flow.cpp,
variational_refinement.cpp; Kroeger et al. 2016, "Fast Optical Flow using Dense Inverse Search").
This script records what OpenCV itself computes, so the Rust tests can hold the port to it.

Pinned (pip install into a throwaway venv, e.g. /tmp/flowvenv; nothing else is needed):
    opencv-python-headless==5.0.0.93   numpy==2.4.6   safetensors==0.8.0
plus ffmpeg on PATH (to read frames of tests/data/*.mp4; run `bash tools/setup.sh` if missing).

Output (tests/fixtures/flow/):
  synthetic_{translate,rotate,zoom}.safetensors
      a, b            u8 [H, W]    gray frames (cv2.COLOR_RGB2GRAY)
      flow_{ultrafast,fast,medium}  f16 [H, W, 2]  OpenCV's DIS flow a -> b for each preset
      gt_affine       f64 [2, 3]   the exact ground truth: pixel (x, y) of `a` moves to
                                   gt_affine @ (x, y, 1) in `b` (a dense GT flow would only add
                                   f16 rounding and ~140 kB per pair)
  real_{bigbuckbunny,bikes,carphone}.safetensors
      a, b, flow_{ultrafast,fast,medium}  as above, two consecutive frames of a real clip
  rgb_gray.safetensors
      rgb u8 [48, 64, 3], gray u8 [48, 64]   cv2.cvtColor(rgb, COLOR_RGB2GRAY) on a real crop
  meta.json   versions, how each pair was made, OpenCV's mean EPE vs GT per preset and motion
              (synthetic pairs; pixels at least MARGIN px from the border)

Synthetic pairs: frame 40 of bigbuckbunny.mp4 at its native 1280x720 (gray), warped with
cv2.warpAffine (bilinear, reflect-101 border) by the motion given in fixture pixels, then both the
original and the warped frame are area-downscaled by 5 (cv2.INTER_AREA, 256x144) and cropped to
250x140 (odd pyramid sizes: 125x70 -> 62x35 -> 31x17, so the non-integer INTER_AREA path runs).
Warping at 5x resolution keeps `b` as sharp as `a`; the motion is then exactly affine in fixture
coordinates. Flows are stored as f16 to keep the whole directory under 3 MB.

Usage: python make_flow_fixtures.py [OUT_DIR]   (default: ../../tests/fixtures/flow)
"""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
DATA = os.path.join(ROOT, "tests", "data")
MARGIN = 16
PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
HI_SCALE = 5  # 1280x720 -> 256x144
CROP = (3, 2, 250, 140)  # x0, y0, w, h of the fixture inside the 256x144 frame


def read_frame(clip, index, size=None):
    """Frame `index` of tests/data/`clip` as rgb24 (H, W, 3), optionally scaled by ffmpeg."""
    vf = f"select=eq(n\\,{index})"
    if size is not None:
        vf += f",scale={size[0]}:{size[1]}"
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height",
         "-of", "csv=p=0", os.path.join(DATA, clip)], check=True, capture_output=True, text=True)
    w, h = (int(v) for v in probe.stdout.strip().split(","))
    if size is not None:
        w, h = size
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", os.path.join(DATA, clip), "-vf", vf, "-frames:v", "1",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(h, w, 3)


def dis_flows(a, b):
    out = {}
    for name, preset in PRESETS.items():
        dis = cv2.DISOpticalFlow_create(preset)
        out[name] = dis.calc(a, b, None)
    return out


def affine_about_centre(angle_deg, zoom, shift, centre):
    """2x3 matrix: rotate by angle (counter-clockwise on screen, as cv2) and zoom about `centre`,
    then translate by `shift`; maps a point of frame a to its position in frame b."""
    m = cv2.getRotationMatrix2D(centre, angle_deg, zoom).astype(np.float64)
    m[:, 2] += shift
    return m


def lowres_affine(m_hi):
    """The same motion in fixture coordinates. Area downscaling by s maps the hi-res pixel centre X
    to u = (X + 0.5) / s - 0.5; the crop subtracts (x0, y0) on both frames."""
    s = HI_SCALE
    x0, y0 = CROP[0], CROP[1]
    # u_crop -> X: X = s * (u_crop + c + 0.5) - 0.5
    to_hi = np.array([[s, 0, s * (x0 + 0.5) - 0.5], [0, s, s * (y0 + 0.5) - 0.5], [0, 0, 1.0]])
    from_hi = np.linalg.inv(to_hi)
    m = np.vstack([m_hi, [0, 0, 1.0]])
    return (from_hi @ m @ to_hi)[:2]


def gt_flow(m, h, w):
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    dx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2] - xs
    dy = m[1, 0] * xs + m[1, 1] * ys + m[1, 2] - ys
    return np.stack([dx, dy], axis=-1)


def mean_epe(f, g):
    d = np.linalg.norm(f.astype(np.float64) - g, axis=-1)
    return float(d[MARGIN:-MARGIN, MARGIN:-MARGIN].mean())


def to_gray(rgb):
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def crop(img):
    x0, y0, w, h = CROP
    return np.ascontiguousarray(img[y0:y0 + h, x0:x0 + w])


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "fixtures", "flow")
    os.makedirs(out_dir, exist_ok=True)
    cv2.setNumThreads(1)
    meta = {
        "versions": {"opencv": cv2.__version__, "numpy": np.__version__, "python": sys.version.split()[0]},
        "margin": MARGIN,
        "synthetic": {},
        "real": {},
    }

    hi = to_gray(read_frame("bigbuckbunny.mp4", 40))
    hh, hw = hi.shape
    centre = ((hw - 1) / 2.0, (hh - 1) / 2.0)
    s = float(HI_SCALE)
    motions = {
        # (angle in degrees, zoom, translation in fixture pixels)
        "translate": (0.0, 1.0, (3.4, -1.7)),
        "rotate": (2.0, 1.0, (0.0, 0.0)),
        "zoom": (0.0, 1.03, (0.0, 0.0)),
    }
    small = (hw // HI_SCALE, hh // HI_SCALE)
    a = crop(cv2.resize(hi, small, interpolation=cv2.INTER_AREA))
    for name, (angle, zoom, shift) in motions.items():
        m_hi = affine_about_centre(angle, zoom, np.array(shift) * s, centre)
        warped = cv2.warpAffine(hi, m_hi, (hw, hh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        b = crop(cv2.resize(warped, small, interpolation=cv2.INTER_AREA))
        m = lowres_affine(m_hi)
        gt = gt_flow(m, *a.shape)
        flows = dis_flows(a, b)
        tensors = {"a": a, "b": b, "gt_affine": m.astype(np.float64)}
        epe = {}
        for p, f in flows.items():
            tensors[f"flow_{p}"] = f.astype(np.float16)
            epe[p] = mean_epe(f, gt)
        save_file(tensors, os.path.join(out_dir, f"synthetic_{name}.safetensors"))
        meta["synthetic"][name] = {
            "source": "bigbuckbunny.mp4 frame 40, 1280x720 gray, warpAffine then INTER_AREA /5, crop",
            "angle_deg": angle, "zoom": zoom, "shift_px": list(shift),
            "gt_affine": m.tolist(), "size": [a.shape[1], a.shape[0]],
            "opencv_epe_vs_gt": epe,
        }
        print(f"synthetic {name:9s} OpenCV EPE vs GT: " + "  ".join(f"{p} {v:.4f}" for p, v in epe.items()))

    real = {
        "bigbuckbunny": ("bigbuckbunny.mp4", 40, (250, 140)),
        "bikes": ("bikes.mp4", 150, (254, 108)),
        "carphone": ("carphone_pristine.mp4", 60, None),
    }
    for name, (clip, index, size) in real.items():
        a = to_gray(read_frame(clip, index, size))
        b = to_gray(read_frame(clip, index + 1, size))
        flows = dis_flows(a, b)
        tensors = {"a": a, "b": b}
        for p, f in flows.items():
            tensors[f"flow_{p}"] = f.astype(np.float16)
        save_file(tensors, os.path.join(out_dir, f"real_{name}.safetensors"))
        meta["real"][name] = {
            "clip": clip, "frames": [index, index + 1], "size": [a.shape[1], a.shape[0]],
            "opencv_mean_magnitude": {p: float(np.linalg.norm(f, axis=-1).mean()) for p, f in flows.items()},
        }
        print(f"real {name:12s} {a.shape[1]}x{a.shape[0]}  mean |flow| medium "
              f"{meta['real'][name]['opencv_mean_magnitude']['medium']:.3f}")

    rgb = np.ascontiguousarray(read_frame("bikes.mp4", 150)[100:148, 300:364])
    save_file({"rgb": rgb, "gray": to_gray(rgb)}, os.path.join(out_dir, "rgb_gray.safetensors"))

    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(out_dir, n)) for n in os.listdir(out_dir))
    print(f"wrote {out_dir} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
