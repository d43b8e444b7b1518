#!/usr/bin/env python3
"""Seconds per restyled frame, end to end, default settings vs `--fast`, ours vs diffusers.

One 848x480 frame through img2img as the stylize stage runs it (VAE encode, sampling, VAE
decode; the prompt encoded beforehand, not timed), on the SD-2-base-sized random pipeline
(make_sd2_random.py), each setting in its own process (peak RSS its own), diffusers'
StableDiffusionImg2ImgPipeline and the project's `sd_bench --cases frame` in the same
invocation:

  default  DDIM, 10 steps, strength 0.6 (6 run), guidance 7.5 (CFG: 12 UNet evaluations),
           the model's VAE
  fast     what --fast sets for an SD 1.x model: the LCM-LoRA fused in, LCM, 4 steps (2 run),
           guidance 1 (2 UNet evaluations), TAESD. The LoRA is random with LCM-LoRA's shape
           (rank 64 on every attention, feed-forward, resnet, time-embedding and sampler conv
           of the UNet, as train_lcm_distill_lora_sd.py targets them), written once to
           MODEL_DIR/lcm-lora/pytorch_lora_weights.safetensors in PEFT keys; diffusers loads it
           with load_lora_weights + fuse_lora (the model card's way), we fuse it at load.
           TAESD: the diffusers folder given by --taesd (tests/fixtures/sd/taesd: real config).
  turbo    what --fast sets for a few-step distilled model (SD-Turbo): Euler, 2 steps (1 run at
           strength 0.6), no guidance (1 UNet evaluation), TAESD; the cost is that of SD-Turbo
           (same architecture as this SD-2-base-sized model; diffusers gets its trailing spacing).

Usage: python bench_frame.py MODEL_DIR --taesd DIR [--reps 1] [--only default,fast,turbo]
                              [--bench-bin target/release/examples/sd_bench]
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
LCM_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]
SETTINGS = {
    "default": dict(scheduler="ddim", steps=10, strength=0.6, guidance=7.5),
    "fast": dict(scheduler="lcm", steps=4, strength=0.6, guidance=1.0),
    "turbo": dict(scheduler="euler", steps=2, strength=0.6, guidance=0.0),
}


def make_lora(model, path):
    """A random LoRA of LCM-LoRA's shape for the model's UNet, in PEFT keys (unet.<module>.lora_A/B)."""
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(model, "unet"))
    unet.add_adapter(LoraConfig(r=64, lora_alpha=64, target_modules=LCM_LORA_TARGETS, init_lora_weights="gaussian"))
    sd = get_peft_model_state_dict(unet)
    for k, v in sd.items():  # lora_B starts at 0; make every update count
        if "lora_B" in k:
            v.normal_(0, 1e-3)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({"unet." + k: v.contiguous() for k, v in sd.items()}, path)
    print(f"wrote {path}: {len(sd)} tensors, {os.path.getsize(path) >> 20} MB", flush=True)


def child(a):
    import torch
    from diffusers import (AutoencoderTiny, DDIMScheduler, EulerDiscreteScheduler, LCMScheduler,
                           StableDiffusionImg2ImgPipeline)
    torch.set_num_threads(2)
    s = SETTINGS[a.child]
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    sched = {"ddim": DDIMScheduler, "lcm": LCMScheduler, "euler": EulerDiscreteScheduler}[s["scheduler"]]
    part = lambda name: os.path.join(a.model, name)  # noqa: E731
    pipe = StableDiffusionImg2ImgPipeline(
        vae=AutoencoderKL.from_pretrained(part("vae")), text_encoder=CLIPTextModel.from_pretrained(part("text_encoder")),
        tokenizer=CLIPTokenizer.from_pretrained(part("tokenizer")), unet=UNet2DConditionModel.from_pretrained(part("unet")),
        scheduler=sched.from_pretrained(part("scheduler")), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    if a.child == "turbo":
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    if a.child == "fast":
        pipe.load_lora_weights(os.path.dirname(a.lora), weight_name=os.path.basename(a.lora))
        pipe.fuse_lora()
    if a.child in ("fast", "turbo"):
        pipe.vae = AutoencoderTiny.from_pretrained(a.taesd)
    pipe.set_progress_bar_config(disable=True)
    guided = s["guidance"] > 1
    with torch.inference_mode():
        pos, neg = pipe.encode_prompt("a photograph of an astronaut", "cpu", 1, guided, "")
        pipe.text_encoder = None  # freed, as ours is after encoding
        image = torch.rand(1, 3, 480, 848)
        times = []
        for _ in range(a.reps):
            t0 = time.perf_counter()
            pipe(prompt_embeds=pos, negative_prompt_embeds=neg, image=image, strength=s["strength"],
                 num_inference_steps=s["steps"], guidance_scale=s["guidance"], output_type="pt",
                 generator=torch.Generator().manual_seed(0))
            times.append(round(time.perf_counter() - t0, 3))
    print("RESULT " + json.dumps({"frame_s": times,
                                  "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}),
          flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--taesd", required=True)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--bench-bin", default=os.path.join(ROOT, "target", "release", "examples", "sd_bench"))
    ap.add_argument("--child", choices=list(SETTINGS))
    ap.add_argument("--lora")
    ap.add_argument("--only", default=",".join(SETTINGS))
    a = ap.parse_args()
    a.lora = a.lora or os.path.join(a.model, "lcm-lora", "pytorch_lora_weights.safetensors")
    if a.child:
        return child(a)
    if not os.path.exists(a.lora):
        make_lora(a.model, a.lora)
    load0 = os.getloadavg()
    rows = {}
    for name in a.only.split(","):
        s = SETTINGS[name]
        p = subprocess.run([sys.executable, __file__, a.model, "--taesd", a.taesd, "--reps", str(a.reps),
                            "--lora", a.lora, "--child", name], capture_output=True, text=True)
        t = result_line(p.stdout)
        if t is None:
            sys.exit(f"diffusers {name} failed:\n{p.stderr[-3000:]}")
        cmd = [a.bench_bin, "--model", a.model, "--cases", "frame", "--reps", str(a.reps)]
        cmd += [x for k, v in s.items() for x in (f"--{k}", str(v))]
        if name == "fast":
            cmd += ["--lora", a.lora]
        if name in ("fast", "turbo"):
            cmd += ["--tiny-vae", a.taesd]
        p = subprocess.run(cmd, capture_output=True, text=True)
        r = result_line(p.stdout)
        if r is None:
            sys.exit(f"sd_bench {name} failed:\n{p.stderr[-3000:]}")
        rows[name] = (t, r["frame"])
        print(name, "diffusers", json.dumps(t), "ours", json.dumps(r["frame"]), flush=True)
    load1 = os.getloadavg()
    print(f"\n{'848x480 frame':10} {'UNet evals':>10} {'diffusers s':>12} {'ours s':>8} {'ours/diffusers':>15} "
          f"{'peak RSS MB diffusers / ours':>29}")
    for name, (t, r) in rows.items():
        ts, rs = min(t["frame_s"]), min(r["frame_s"])
        print(f"{name:10} {r['unet_calls']:10} {ts:12.1f} {rs:8.1f} {rs / ts:15.2f} "
              f"{t['peak_rss_MB']:>16} / {r['peak_rss_MB']:.0f}")
    if "default" in rows:
        td, rd = rows["default"]
        for name, (t, r) in rows.items():
            if name != "default":
                print(f"{name} speed-up per frame: diffusers {min(td['frame_s']) / min(t['frame_s']):.1f}x, "
                      f"ours {min(rd['frame_s']) / min(r['frame_s']):.1f}x")
    print(f"load average before/after {[round(x, 1) for x in load0]} / {[round(x, 1) for x in load1]}")
    print("RESULT " + json.dumps({k: {"diffusers": t, "ours": r} for k, (t, r) in rows.items()}))


if __name__ == "__main__":
    main()
