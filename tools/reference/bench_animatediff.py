#!/usr/bin/env python3
"""AnimateDiff's cost on the CPU, ours vs diffusers in one invocation: one CFG denoising step of a
16-frame window through an SD-1.5-sized motion UNet (UNetMotionModel.from_unet2d(SD 1.5 UNet,
MotionAdapter() with v1-5-2's config: mid block, 8 heads, 32 positions), random weights) at
512x288 (latent 36x64), per frame, next to one frame's CFG step through the plain UNet.
diffusers runs the guidance pair as one batch of 2x16 frames; ours as two calls of 16 (as
sampling/animate.rs does: the same values, half the activations).

MODEL_DIR (made on first use, ~5.5 GB): unet/ (SD 1.5 UNet2DConditionModel config, random),
motion/ (MotionAdapter, random, every tensor perturbed so no module is the identity), and the
VAE, text encoder, tokenizer and scheduler linked from the SD-2-base random pipeline
(make_sd2_random.py; only configs are read from them here).

Usage: python bench_animatediff.py MODEL_DIR --sd2 SD2_RANDOM_DIR [--reps 1] [--frames 16]
Build first: cargo build --release --example sd_bench
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from bench_sd_compare import result_line  # noqa: E402


def sd15_unet():
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(
        sample_size=64, cross_attention_dim=768, attention_head_dim=8, use_linear_projection=False,
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)


def make(model, sd2):
    import torch
    from diffusers import MotionAdapter
    torch.manual_seed(0)
    sd15_unet().save_pretrained(os.path.join(model, "unet"))
    adapter = MotionAdapter()
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if "proj_out" in name:  # zero-initialised: the modules would be the identity
                p.normal_(0, 0.02)
    adapter.save_pretrained(os.path.join(model, "motion"))
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        os.symlink(os.path.abspath(os.path.join(sd2, part)), os.path.join(model, part))


def child(a):
    import torch
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
    torch.set_num_threads(2)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(a.model, "unet"))
    adapter = MotionAdapter.from_pretrained(os.path.join(a.model, "motion"))
    motion = UNetMotionModel.from_unet2d(unet, adapter).eval()
    n, (h, w) = a.frames, (36, 64)
    x = torch.randn(2, 4, n, h, w)
    emb = torch.randn(2 * n, 77, 768)
    t = torch.tensor(501)
    r = {}

    def timed(fn):
        ts = []
        for _ in range(a.reps):
            t0 = time.perf_counter()
            fn()
            ts.append(round(time.perf_counter() - t0, 3))
        return ts

    with torch.inference_mode():
        r["window_step_s"] = timed(lambda: motion(x, t, encoder_hidden_states=emb))
        r["peak_rss_MB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        del motion, adapter
        x1, e1 = torch.randn(2, 4, h, w), emb[:2]
        r["plain_step_per_frame_s"] = timed(lambda: unet(x1, t, encoder_hidden_states=e1))
    print("RESULT " + json.dumps(r), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--sd2")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--bench-bin", default=os.path.join(ROOT, "target", "release", "examples", "sd_bench"))
    a = ap.parse_args()
    if a.child:
        return child(a)
    if not os.path.exists(os.path.join(a.model, "motion")):
        if not a.sd2:
            sys.exit("--sd2 SD2_RANDOM_DIR is needed to make MODEL_DIR")
        make(a.model, a.sd2)
    load0 = os.getloadavg()
    p = subprocess.run([sys.executable, __file__, a.model, "--child", "--reps", str(a.reps), "--frames", str(a.frames)],
                       capture_output=True, text=True)
    t = result_line(p.stdout)
    if t is None:
        sys.exit(f"diffusers failed:\n{p.stderr[-3000:]}")
    p = subprocess.run([a.bench_bin, "--model", a.model, "--cases", "motion", "--motion-adapter",
                        os.path.join(a.model, "motion"), "--frames", str(a.frames), "--latent", "36x64",
                        "--reps", str(a.reps)], capture_output=True, text=True)
    r = result_line(p.stdout)
    if r is None:
        sys.exit(f"sd_bench failed:\n{p.stderr[-3000:]}")
    r = r["motion"]
    load1 = os.getloadavg()
    n = a.frames
    print(f"\n{'512x288, CFG, per frame':40} {'diffusers s':>12} {'ours s':>8} {'ours/diffusers':>15}")
    for name, k, div in [(f"motion UNet step, window of {n}", "window_step_s", n),
                         ("plain UNet step", "plain_step_per_frame_s", 1)]:
        ts, rs = min(t[k]) / div, min(r[k]) / div
        print(f"{name:40} {ts:12.2f} {rs:8.2f} {rs / ts:15.2f}")
    print(f"peak RSS MB (motion UNet loaded, window step): diffusers {t['peak_rss_MB']}  ours {r['peak_rss_MB']:.0f}")
    print(f"load average before/after {[round(x, 1) for x in load0]} / {[round(x, 1) for x in load1]}")
    print("RESULT " + json.dumps({"diffusers": t, "ours": r}))


if __name__ == "__main__":
    main()
