#!/usr/bin/env python3
"""Goldens for `upscale` on images with transparency, grey images and 16-bit images
(tests/fixtures/esrgan/alpha_golden.safetensors), made with the real realesr-animevideov3 x4
weights (.cache/esrgan/realesr-animevideov3.safetensors, from ncnn_to_safetensors.py).

`enhance` below follows the semantics of Real-ESRGAN's `RealESRGANer.enhance`
(realesrgan/utils.py, v0.3.0), re-written here:
  * samples / max_range, max_range = 65535 when the image holds a value > 256, else 255;
  * grey (2-D) images: cv2 GRAY2RGB, the network, clamp, cv2 BGR2GRAY;
  * 4 channels: the colour as RGB; the alpha plane either through the network as a grey
    image (GRAY2RGB, network, clamp, BGR2GRAY; `alpha_upsampler='realesrgan'`, the default)
    or `cv2.resize(alpha, (w·s, h·s), INTER_LINEAR)` (any other value);
  * tiles as `tile_process` (cores of `tile` px, `tile_pad` px of real context clipped at the
    border), `pre_pad` px of reflection on the right and bottom only (0 here: the Rust side's
    default ncnn-style pre-pad on every side is a different convention, set to 0 in the test);
  * output (x · max_range).round() (NumPy: ties to even).
One extension, the layout the Rust tool keeps: grey + alpha (LA). cv2.imread expands it to
BGRA; here the grey plane takes the grey branch and the alpha plane the 4-channel branch's path.

Cases (input 33x25, odd on purpose, a crop of photo_160x120.png with a synthetic alpha: a soft
disc, a hard-edged hole and a ramp):
  rgba8_model, rgba8_resize, rgba8_model_tile16 (tile 16, tile_pad 10), la8_model,
  rgba16_model, rgba8_opaque_model (alpha 255 everywhere, run through the network anyway).
Keys: `<case>.input` HWC f32 sample values (R,G,B[,A] or L[,A]); `<case>.output` HWC f32 in
[0, 1] before quantisation (after clamp, luma and alpha steps), channels in the same order.

Usage: python golden_esrgan_alpha.py [OUT]   (default ../../tests/fixtures/esrgan/alpha_golden.safetensors)
"""
import os
import sys

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from esrgan_arch import SRVGGNetCompact  # noqa: E402

torch.set_num_threads(2)
SCALE = 4


def run_net(model, img, tile, tile_pad, pre_pad):
    """HWC float32 RGB in [0, 1] -> CHW float32 output at ×SCALE (unclamped)."""
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None].float()
    if pre_pad:
        x = F.pad(x, (0, pre_pad, 0, pre_pad), "reflect")
    _, _, h, w = x.shape
    with torch.no_grad():
        if tile == 0:
            y = model(x)
        else:
            y = x.new_zeros((1, 3, h * SCALE, w * SCALE))
            for y0 in range(0, h, tile):
                for x0 in range(0, w, tile):
                    y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                    py0, px0 = max(y0 - tile_pad, 0), max(x0 - tile_pad, 0)
                    py1, px1 = min(y1 + tile_pad, h), min(x1 + tile_pad, w)
                    out = model(x[:, :, py0:py1, px0:px1])
                    oy, ox = (y0 - py0) * SCALE, (x0 - px0) * SCALE
                    y[:, :, y0 * SCALE:y1 * SCALE, x0 * SCALE:x1 * SCALE] = \
                        out[:, :, oy:oy + (y1 - y0) * SCALE, ox:ox + (x1 - x0) * SCALE]
    if pre_pad:
        y = y[:, :, :(h - pre_pad) * SCALE, :(w - pre_pad) * SCALE]
    return y[0]


def net_grey(model, plane, **kw):
    """A grey plane through the network and back to grey (GRAY2RGB ... BGR2GRAY)."""
    out = run_net(model, cv2.cvtColor(plane, cv2.COLOR_GRAY2RGB), **kw).clamp(0, 1).numpy()
    return cv2.cvtColor(np.ascontiguousarray(out[[2, 1, 0]].transpose(1, 2, 0)), cv2.COLOR_BGR2GRAY)


def enhance(model, img, alpha_upsampler="realesrgan", tile=0, tile_pad=10, pre_pad=0):
    """img: HWC (or HW) integer samples in cv2's channel order (B,G,R[,A]; L; or our L,A).
    Returns HWC float32 in [0, 1] (before quantisation), channels in the input's order."""
    img = img.astype(np.float32)
    max_range = 65535 if np.max(img) > 256 else 255
    img = img / max_range
    kw = dict(tile=tile, tile_pad=tile_pad, pre_pad=pre_pad)
    if img.ndim == 2 or img.shape[2] == 2:  # L, or L + alpha
        grey = img if img.ndim == 2 else np.ascontiguousarray(img[:, :, 0])
        out = net_grey(model, grey, **kw)[:, :, None]
        alpha = None if img.ndim == 2 else np.ascontiguousarray(img[:, :, 1])
    else:
        rgb = cv2.cvtColor(np.ascontiguousarray(img[:, :, :3]), cv2.COLOR_BGR2RGB)
        out = run_net(model, rgb, **kw).clamp(0, 1).numpy()
        out = np.ascontiguousarray(out[[2, 1, 0]].transpose(1, 2, 0))  # BGR
        alpha = np.ascontiguousarray(img[:, :, 3]) if img.shape[2] == 4 else None
    if alpha is not None:
        if alpha_upsampler == "realesrgan":
            a = net_grey(model, alpha, **kw)
        else:
            h, w = alpha.shape
            a = cv2.resize(alpha, (w * SCALE, h * SCALE), interpolation=cv2.INTER_LINEAR)
        out = np.concatenate([out, a[:, :, None]], axis=2)
    return out.astype(np.float32), max_range


def synthetic_alpha(h, w):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    disc = np.clip(1.0 - (np.hypot(xx - w * 0.4, yy - h * 0.5) - 7.0) / 3.0, 0, 1)  # soft edge
    ramp = xx / (w - 1)
    a = np.maximum(disc, ramp * 0.6)
    a[3:9, 20:29] = 0.0  # hard-edged hole
    return np.round(a * 255).astype(np.uint8)


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        HERE, "..", "..", "tests", "fixtures", "esrgan", "alpha_golden.safetensors")
    model = SRVGGNetCompact(3, 3, num_feat=64, num_conv=16, upscale=4, act_type="prelu")
    model.load_state_dict(load_file(os.path.join(HERE, ".cache", "esrgan", "realesr-animevideov3.safetensors")))
    model.eval()

    photo = np.asarray(Image.open(os.path.join(HERE, "..", "..", "tests", "fixtures", "esrgan", "photo_160x120.png")).convert("RGB"))
    h, w = 25, 33
    rgb = photo[40:40 + h, 60:60 + w].astype(np.uint16)
    alpha = synthetic_alpha(h, w)
    grey = np.asarray(Image.fromarray(rgb.astype(np.uint8)).convert("L"))
    # 16-bit: the 8-bit values widened plus a deterministic low-byte pattern.
    low = (np.arange(h * w * 4).reshape(h, w, 4) * 37 % 251).astype(np.uint16)
    rgba16 = np.concatenate([rgb, alpha[:, :, None]], axis=2).astype(np.uint16) * 257 // 2 + low

    cases = {
        # name: (input in R,G,B[,A] / L[,A] order, enhance kwargs)
        "rgba8_model": (np.dstack([rgb, alpha]).astype(np.uint8), {}),
        "rgba8_resize": (np.dstack([rgb, alpha]).astype(np.uint8), {"alpha_upsampler": "cv2"}),
        "rgba8_model_tile16": (np.dstack([rgb, alpha]).astype(np.uint8), {"tile": 16, "tile_pad": 10}),
        "la8_model": (np.dstack([grey, alpha]).astype(np.uint8), {}),
        "rgba16_model": (rgba16, {}),
        "rgba8_opaque_model": (np.dstack([rgb, np.full_like(alpha, 255)]).astype(np.uint8), {}),
    }
    gold = {}
    for name, (rgba, kw) in cases.items():
        cv_order = rgba[:, :, [2, 1, 0, 3]] if rgba.shape[2] == 4 else rgba
        out, max_range = enhance(model, cv_order, **kw)
        if rgba.shape[2] == 4:
            out = out[:, :, [2, 1, 0, 3]]
        expect = 65535 if name.startswith("rgba16") else 255
        assert max_range == expect, (name, max_range)
        gold[f"{name}.input"] = torch.from_numpy(rgba.astype(np.float32))
        gold[f"{name}.output"] = torch.from_numpy(np.ascontiguousarray(out))
        a = out[:, :, -1]
        print(f"{name}: in {rgba.shape} max {rgba.max()}, out {out.shape}, alpha range {a.min():.4f}..{a.max():.4f}")
    save_file(gold, out_path, metadata={"model": "realesr-animevideov3 x4", "opencv": cv2.__version__,
                                        "torch": torch.__version__})
    print("wrote", out_path, os.path.getsize(out_path) // 1024, "KiB")


if __name__ == "__main__":
    main()
