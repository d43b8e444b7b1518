#!/usr/bin/env python3
"""AnimateDiff goldens on tiny-sd with the tiny motion adapters of make_tiny_motion.py (diffusers 0.42.1, fp32, CPU).

MODELS: tests/fixtures/sd/tiny-sd (diffusers layout) and tests/fixtures/sd/motion/tiny-{v1,v2} read back as
float32 (MotionAdapter.from_pretrained(..., torch_dtype=float32)); motion UNet = UNetMotionModel.from_unet2d(unet,
adapter) (v2: UNetMidBlockCrossAttnMotion with a motion module after the mid attention; v1: plain
UNetMidBlock2DCrossAttn). Prompt0 of golden_sd.py, negative "". Timestep 501 for the forward goldens.

LAYOUTS. diffusers' UNetMotionModel.forward takes sample [B, C, F, h, w] and encoder_hidden_states [B*F, 77, D]
(batch-major, frame-minor: row b*F + f; the pipeline builds it as cat([neg, pos]).repeat_interleave(F, 0)),
and returns [B, C, F, h, w]. Inside, everything runs on [(B F), C, h, w] (sample.permute(0,2,1,3,4).reshape);
the time embedding is repeat_interleave'd F times. A motion module reshapes [(B F), C, h, w] -> GroupNorm on
[B, C, F, h, w] (statistics over C/32 channels x F frames x h x w: ACROSS the frames of one batch item) ->
[(B h w), F, C] -> proj_in -> transformer block (attention over the F axis) -> proj_out -> back, + residual.

animatediff_unet.safetensors   (forward of the motion UNet)
  prompt_input_ids, negative_input_ids [1,77] int64; timestep int64 scalar 501
  f{F}.sample [1,4,F,8,12] (randn seed 1000+F), f{F}.encoder_hidden_states [F,77,32] = text_encoder(prompt0)
      repeated F times                                      for F in 1, 2, 16
  b2f2.sample [2,4,2,8,12] (seed 1100), b2f2.encoder_hidden_states [4,77,32] = [neg f0, neg f1, pos f0, pos f1]
      (the CFG batch exactly as the pipeline feeds it)
  {v1,v2}.f{F}.out [1,4,F,8,12], {v1,v2}.b2f2.out [2,4,2,8,12]
  Latent 8x12 (non-square, so an h/w swap in the (B h w) reshape fails). Tolerance 1e-4.

animatediff_img2img.safetensors   (video-to-video, AnimateDiffVideoToVideoPipeline semantics)
  FRAMES: tests/data/bikes.mp4 frames n = 100..110 (ffmpeg select, as golden_crossframe.py), RGB, PIL-bicubic
  resized (squashed) to W x H = 32 x 24 (tiny-sd's VAE factor is 2 -> latent h x w = 12 x 16).
  frames_in [11,3,24,32] in [-1,1] (RGB/255*2-1, NCHW); a case with F frames uses frames_in[:F].
  prompt_input_ids, negative_input_ids [1,77]; prompt_embeds [2,77,32] = [neg "", prompt0] (one copy each; the
  UNet batch is their repeat_interleave(F)); timesteps [10] int64 (full DDIM/Euler leading schedule, steps_offset 1;
  int(10*0.6) = 6 run: t = 501,401,301,201,101,1); euler.sigmas [11] float32 (EulerDiscreteScheduler table).
  f{F}.noise_vae [F,4,12,16]: the VAE posterior draw (encode_video: ONE vae.encode of all F <= 16 frames,
      latent_dist.sample -> z = mean + exp(0.5*clamp(logvar,-30,20)) * noise_vae; x0 = 0.18215 z)
  f{F}.noise_add [F,4,12,16]: the pipeline draws randn [1, F, 4, h, w] ((B, F, C, h, w) order, stored without
      the B=1 axis) and add_noise(x0, noise, t=501) (DDIM: sqrt(a) x0 + sqrt(1-a) n; Euler: x0 + sigma n), then
      permutes to [B, C, F, h, w].  DDIM (eta 0) and Euler (s_churn 0) draw nothing else.
      Every case reseeds 42; the draws depend only on F (asserted equal between the cases of one F).
  Cases (strength 0.6, 10 steps, guidance 7.5, prompt0 / negative ""):
    ddim.one            DDIM, v2, F=6, one window (the plain pipeline)
    euler.one           EulerDiscreteScheduler.from_config(tiny-sd's DDIM config), v2, F=6
    v1.ddim.one         DDIM, adapter v1 (no motion mid block), F=6
    ddim.windows_pyramid       DDIM, v2, F=10, context windows L=4, O=2, pyramid weights
    ddim.windows_flat          DDIM, v2, F=10, L=4, O=2, flat weights
    ddim.windows_pyramid_shift DDIM, v2, F=11, L=4, O=2, pyramid (the last window is shifted to end at F)
  out: <case>.final_latents [F,4,12,16] (frame-major; the pipeline's [1,4,F,h,w] permuted),
       <case>.frames_out [F,3,24,32] = clamp(vae.decode(final_latents / 0.18215) / 2 + 0.5, 0, 1)
       <case>.windows [n_windows, L] int64 and <case>.weights [L] float32 (windowed cases)
  Tolerance 1e-3.

CONTEXT WINDOWS (ComfyUI-AnimateDiff-Evolved "standard_static" schedule, animatediff/context.py
create_windows_static_standard, with the fuse of animatediff/sampling.py sliding_calc_cond_batch):
  if F <= L: one window [0..F) (and the UNet runs once on all frames: no windowing at all);
  else for s = 0, L-O, 2(L-O), ...: if s + L >= F: append [F-L .. F) and stop; else append [s .. s+L).
  (F=10, L=4, O=2 -> [0-3] [2-5] [4-7] [6-9]; F=11 -> [0-3] [2-5] [4-7] [6-9] [7-10].)
  At each step the WHOLE motion UNet runs once per window on that window's frames, for the CFG batch
  (sample [2,4,L,h,w] = the window's latents twice, encoder_hidden_states [2L,77,D] = [neg x L, pos x L]);
  so the motion modules see only L frames (position encodings 0..L-1, GroupNorm statistics over the window).
  Per frame f: eps_u(f) = sum_w weight_w[pos of f in w] * out_w,u(f) / sum_w weight_w[pos of f in w], same for
  eps_c; then CFG eps = eps_u + 7.5 (eps_c - eps_u) and the scheduler step on all F frames at once.
  Weights (create_weights_flat / create_weights_pyramid): flat = [1]*L; pyramid: even L -> [1..L/2] + [L/2..1],
  odd L -> [1..(L+1)/2-1] + [(L+1)/2] + [(L+1)/2-1..1] (L=4: 1,2,2,1; L=5: 1,2,3,2,1).
  ComfyUI fuses the model's denoised x0 (its apply_model output), here eps: the same for epsilon prediction
  (x0 = x - sigma eps is affine in eps with the same x for every window and normalised weights).
  Not diffusers' FreeNoise (which windows only the temporal attention).

CHECKS recorded in animatediff.json: reference loop (reference_video2video below, explicit maths, scheduler
tables only) vs the pipeline for every case (the windowed cases run the pipeline with its UNet's forward
replaced by the window-and-fuse wrapper); fp64 re-run of the reference loop; a rerun of the pipeline
(bit-identical); forward fp32 vs fp64; B=2 batch vs the two items alone; what a per-frame GroupNorm (the original
AnimateDiff repo) or no motion modules would change; window grids / weights for more (F, L, O).

Usage: python golden_animatediff.py   (needs tests/fixtures/sd/motion from make_tiny_motion.py and tests/data/bikes.mp4)
"""
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import diffusers  # noqa: E402
import diffusers.models.autoencoders.vae  # noqa: E402,F401
import diffusers.pipelines.animatediff.pipeline_animatediff_video2video  # noqa: E402,F401
import golden_sd as G  # noqa: E402  (2 threads; wraps randn_tensor)
from golden_sd import save_file, stats, tokenize  # noqa: E402

from diffusers import (AnimateDiffVideoToVideoPipeline, DDIMScheduler, EulerDiscreteScheduler,  # noqa: E402
                       MotionAdapter, StableDiffusionPipeline, UNetMotionModel)
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D, UNetMotionOutput  # noqa: E402

# modules imported after golden_sd: route their randn_tensor through the recorder too
for _name, _mod in list(sys.modules.items()):
    if _name.startswith("diffusers") and getattr(_mod, "randn_tensor", None) is G._ORIG_RANDN:
        setattr(_mod, "randn_tensor", G._recording_randn)

MODELS = os.path.join(REPO, "tests", "fixtures", "sd")
MOTION = os.path.join(MODELS, "motion")
GOLD = os.path.join(MODELS, "golden", "tiny-sd")
CLIP = os.path.join(REPO, "tests", "data", "bikes.mp4")
START, NFRAMES = 100, 11
W, H = 32, 24
PROMPT, NEG = G.PROMPTS[0], ""
STRENGTH, STEPS, GUIDANCE, SEED = 0.6, 10, 7.5, 42
T_FWD = 501
FWD_HW = (8, 12)
CONTEXT_LENGTH, CONTEXT_OVERLAP = 4, 2
CASES = {  # name: (scheduler, adapter, F, fuse or None)
    "ddim.one": ("ddim", "v2", 6, None),
    "euler.one": ("euler", "v2", 6, None),
    "v1.ddim.one": ("ddim", "v1", 6, None),
    "ddim.windows_pyramid": ("ddim", "v2", 10, "pyramid"),
    "ddim.windows_flat": ("ddim", "v2", 10, "flat"),
    "ddim.windows_pyramid_shift": ("ddim", "v2", 11, "pyramid"),
}


# ---------------------------------------------------------------- context windows (ComfyUI-AnimateDiff-Evolved)
def context_windows(num_frames, length, overlap):
    """create_windows_static_standard."""
    if num_frames <= length:
        return [list(range(num_frames))]
    windows = []
    for start in range(0, num_frames, length - overlap):
        if start + length >= num_frames:
            windows.append(list(range(num_frames - length, num_frames)))
            break
        windows.append(list(range(start, start + length)))
    return windows


def context_weights(length, fuse):
    if fuse == "flat":
        return [1.0] * length
    if length % 2 == 0:
        m = length // 2
        return [float(v) for v in list(range(1, m + 1)) + list(range(m, 0, -1))]
    m = (length + 1) // 2
    return [float(v) for v in list(range(1, m)) + [m] + list(range(m - 1, 0, -1))]


def windowed_eps(unet, x, t, emb_u, emb_c, windows, weights):
    """x [F,4,h,w] (already scale_model_input-ed); returns the fused (eps_uncond, eps_cond), each [F,4,h,w]."""
    nf = x.shape[0]
    acc = torch.zeros((2,) + tuple(x.shape), dtype=x.dtype)
    wsum = torch.zeros(nf, dtype=x.dtype)
    for win in windows:
        L = len(win)
        xs = x[win]                                                  # [L,4,h,w]
        sample = torch.stack([xs, xs]).permute(0, 2, 1, 3, 4)        # [2,4,L,h,w]
        ehs = torch.cat([emb_u.expand(L, -1, -1), emb_c.expand(L, -1, -1)])  # [2L,77,D]
        out = unet(sample, t, encoder_hidden_states=ehs).sample.permute(0, 2, 1, 3, 4)  # [2,L,4,h,w]
        w = torch.tensor(weights[:L], dtype=x.dtype)
        acc[:, win] += out * w[None, :, None, None, None]
        wsum[win] += w
    acc = acc / wsum[None, :, None, None, None]
    return acc[0], acc[1]


def windowed_forward_patch(unet, length, overlap, fuse):
    """Replace unet.forward (as the pipeline calls it: sample [B,4,F,h,w], ehs [B*F,77,D]) by window-and-fuse."""
    orig = unet.forward

    def forward(sample, timestep, encoder_hidden_states, **kw):
        b, _, nf = sample.shape[:3]
        windows = context_windows(nf, length, overlap)
        weights = context_weights(length if nf > length else nf, fuse)
        acc = torch.zeros_like(sample)
        wsum = torch.zeros(nf, dtype=sample.dtype)
        for win in windows:
            rows = [bi * nf + f for bi in range(b) for f in win]
            out = orig(sample[:, :, win], timestep, encoder_hidden_states=encoder_hidden_states[rows], **kw).sample
            w = torch.tensor(weights, dtype=sample.dtype)
            acc[:, :, win] += out * w[None, None, :, None, None]
            wsum[win] += w
        return UNetMotionOutput(sample=acc / wsum[None, None, :, None, None])

    unet.forward = forward
    return orig


# ---------------------------------------------------------------- explicit reference loop
@torch.no_grad()
def reference_video2video(te, unet, vae, kind, sched, pos_ids, neg_ids, frames, noise_vae, noise_add,
                          windows, weights, dtype):
    """AnimateDiffVideoToVideoPipeline written out (CFG, eta 0, no FreeInit / FreeNoise), with context windows.
    frames [F,3,H,W] in [-1,1]; noises [F,4,h,w]; latents kept frame-major [F,4,h,w] (= [(B F)...] with B=1)."""
    cast = lambda t: t.to(dtype)  # noqa: E731
    sf = vae.config.scaling_factor
    emb_c = te(pos_ids)[0].to(dtype)       # [1,77,D]
    emb_u = te(neg_ids)[0].to(dtype)
    sched.set_timesteps(STEPS)
    t_start = STEPS - min(int(STEPS * STRENGTH), STEPS)
    timesteps = sched.timesteps[t_start:]
    acp = sched.alphas_cumprod.to(torch.float64)
    dist = vae.encode(cast(frames)).latent_dist
    x0 = sf * (dist.mean + dist.std * cast(noise_vae))
    t0 = int(timesteps[0])
    if kind == "ddim":
        a = float(acp[t0])
        lat = math.sqrt(a) * x0 + math.sqrt(1 - a) * cast(noise_add)
    else:  # euler: x0 + sigma * noise
        sigmas = sched.sigmas.to(torch.float64)
        lat = x0 + float(sigmas[t_start]) * cast(noise_add)
    for i, t in enumerate(timesteps):
        idx, ti = t_start + i, int(t)
        inp = lat / math.sqrt(float(sigmas[idx]) ** 2 + 1) if kind == "euler" else lat
        eu, ec = windowed_eps(unet, inp, t, emb_u, emb_c, windows, weights)
        eps = eu + GUIDANCE * (ec - eu)
        if kind == "ddim":
            prev_t = ti - sched.config.num_train_timesteps // STEPS
            a_t = float(acp[ti])
            a_p = float(acp[prev_t]) if prev_t >= 0 else float(sched.final_alpha_cumprod)
            x0p = (lat - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
            lat = math.sqrt(a_p) * x0p + math.sqrt(1 - a_p) * eps
        else:
            s_from, s_to = float(sigmas[idx]), float(sigmas[idx + 1])
            x0p = lat - s_from * eps
            lat = lat + (lat - x0p) / s_from * (s_to - s_from)
    img = vae.decode(lat / sf).sample
    return lat, (img / 2 + 0.5).clamp(0, 1)


# ---------------------------------------------------------------- helpers
def load_frames():
    with tempfile.TemporaryDirectory() as td:
        cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", CLIP, "-vf",
               f"select=between(n\\,{START}\\,{START + NFRAMES - 1})", "-vsync", "0", os.path.join(td, "f%03d.png")]
        subprocess.run(cmd, check=True)
        names = sorted(os.listdir(td))
        assert len(names) == NFRAMES, names
        raw = [Image.open(os.path.join(td, n)).convert("RGB").copy() for n in names]
    shown = " ".join(cmd).replace(td, "<tmp>").replace(REPO + os.sep, "")  # stable across runs / checkouts
    return [r.resize((W, H), Image.BICUBIC) for r in raw], shown, list(raw[0].size)


def make_scheduler(kind, cfg):
    return (DDIMScheduler if kind == "ddim" else EulerDiscreteScheduler).from_config(cfg)


class PerFrameGroupNorm(torch.nn.Module):
    """The original AnimateDiff repo's motion-module GroupNorm: statistics per frame (input [B,C,F,h,w])."""

    def __init__(self, gn):
        super().__init__()
        self.gn = gn

    def forward(self, x):
        b, c, f, h, w = x.shape
        y = self.gn(x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w))
        return y.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


def motion_modules(m):
    return [mod for mod in m.modules() if isinstance(mod, AnimateDiffTransformer3D)]


# ---------------------------------------------------------------- (a) forward
@torch.no_grad()
def forward_goldens(base, adapters, meta):
    te, tok, unet2d = base.text_encoder, base.tokenizer, base.unet
    pos_ids, neg_ids = tokenize(tok, [PROMPT]), tokenize(tok, [NEG])
    hp, hn = te(pos_ids)[0], te(neg_ids)[0]
    t = torch.tensor(T_FWD, dtype=torch.long)
    gold = {"prompt_input_ids": pos_ids, "negative_input_ids": neg_ids, "timestep": t}
    h, w = FWD_HW
    inputs = {}
    for nf in (1, 2, 16):
        s = torch.randn(1, 4, nf, h, w, generator=torch.Generator().manual_seed(1000 + nf))
        inputs[f"f{nf}"] = (s, hp.repeat_interleave(nf, 0))
    s = torch.randn(2, 4, 2, h, w, generator=torch.Generator().manual_seed(1100))
    inputs["b2f2"] = (s, torch.cat([hn, hp]).repeat_interleave(2, 0))
    for k, (s, e) in inputs.items():
        gold[f"{k}.sample"], gold[f"{k}.encoder_hidden_states"] = s, e
    fm = meta["forward"] = {"timestep": T_FWD, "latent_hw": list(FWD_HW), "checks": {}}
    unet64 = type(unet2d).from_pretrained(os.path.join(MODELS, "tiny-sd", "unet")).double().eval()
    for an, ad in adapters.items():
        m = UNetMotionModel.from_unet2d(unet2d, ad).eval()
        m64 = UNetMotionModel.from_unet2d(unet64, MotionAdapter.from_pretrained(
            os.path.join(MOTION, f"tiny-{an}"), torch_dtype=torch.float64)).eval()
        ck = fm["checks"][an] = {"motion_modules": len(motion_modules(m)),
                                 "motion_unet_parameters": sum(p.numel() for p in m.parameters())}
        for k, (s, e) in inputs.items():
            out = m(s, t, encoder_hidden_states=e).sample
            gold[f"{an}.{k}.out"] = out
            c = ck[k] = {"out_absmax": float(out.abs().max()),
                         "fp32_vs_fp64": stats(out, m64(s.double(), t, encoder_hidden_states=e.double()).sample)}
            # without motion modules (the plain 2D UNet, frames as batch)
            nf = s.shape[2]
            flat = s.permute(0, 2, 1, 3, 4).reshape(-1, 4, *s.shape[3:])
            o2d = unet2d(flat, t, encoder_hidden_states=e).sample
            o2d = o2d.reshape(s.shape[0], nf, 4, *s.shape[3:]).permute(0, 2, 1, 3, 4)
            c["vs_plain_2d_unet"] = stats(out, o2d)["max_abs"]
            if nf > 1:  # the original repo's per-frame GroupNorm in the motion modules
                mods = motion_modules(m)
                saved = [mm.norm for mm in mods]
                for mm in mods:
                    mm.norm = PerFrameGroupNorm(mm.norm)
                c["vs_per_frame_groupnorm"] = stats(out, m(s, t, encoder_hidden_states=e).sample)["max_abs"]
                for mm, n in zip(mods, saved):
                    mm.norm = n
                # frames alone (no temporal mixing) - proves the frames interact
                alone = torch.cat([m(s[:, :, j:j + 1], t, encoder_hidden_states=e.reshape(s.shape[0], nf, 77, -1)
                                     [:, j]).sample for j in range(nf)], dim=2)
                c["vs_each_frame_alone"] = stats(out, alone)["max_abs"]
            if s.shape[0] == 2:
                halves = torch.cat([m(s[b:b + 1], t, encoder_hidden_states=e[b * nf:(b + 1) * nf]).sample
                                    for b in range(2)])
                c["batch2_vs_items_alone"] = stats(out, halves)["max_abs"]
        rerun = m(inputs["f16"][0], t, encoder_hidden_states=inputs["f16"][1]).sample
        ck["f16_rerun_identical"] = bool(torch.equal(rerun, gold[f"{an}.f16.out"]))
        torch.set_num_threads(1)
        ck["f16_1thread_vs_2threads"] = stats(m(inputs["f16"][0], t, encoder_hidden_states=inputs["f16"][1]).sample,
                                              gold[f"{an}.f16.out"])["max_abs"]
        torch.set_num_threads(2)
    save_file(gold, os.path.join(GOLD, "animatediff_unet.safetensors"))
    print("forward", json.dumps(fm["checks"], indent=1))


# ---------------------------------------------------------------- (b) img2img
@torch.no_grad()
def img2img_goldens(base, adapters, meta):
    te, tok, vae, unet2d = base.text_encoder, base.tokenizer, base.vae, base.unet
    sched_cfg = base.scheduler.config
    frames, ffmpeg_cmd, clip_size = load_frames()
    x = base.image_processor.preprocess(frames)  # [11,3,H,W]
    manual = torch.from_numpy(np.stack([np.asarray(f) for f in frames])).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    assert torch.equal(x, manual)
    pos_ids, neg_ids = tokenize(tok, [PROMPT]), tokenize(tok, [NEG])
    gold = {"frames_in": x, "prompt_input_ids": pos_ids, "negative_input_ids": neg_ids,
            "prompt_embeds": torch.cat([te(neg_ids)[0], te(pos_ids)[0]])}
    s = make_scheduler("ddim", sched_cfg)
    s.set_timesteps(STEPS)
    gold["timesteps"] = s.timesteps.clone()
    s = make_scheduler("euler", sched_cfg)
    s.set_timesteps(STEPS)
    gold["euler.sigmas"] = s.sigmas.clone().float()
    im = meta["img2img"] = {"frames": {"clip": os.path.relpath(CLIP, REPO), "start": START, "count": NFRAMES,
                                       "clip_size_wh": clip_size, "size_wh": [W, H], "ffmpeg": ffmpeg_cmd},
                            "strength": STRENGTH, "steps": STEPS, "guidance": GUIDANCE, "seed": SEED,
                            "prompt": PROMPT, "negative_prompt": NEG, "context_length": CONTEXT_LENGTH,
                            "context_overlap": CONTEXT_OVERLAP, "cases": {}}
    te64 = type(te).from_pretrained(os.path.join(MODELS, "tiny-sd", "text_encoder")).double().eval()
    vae64 = type(vae).from_pretrained(os.path.join(MODELS, "tiny-sd", "vae")).double().eval()
    unet64 = type(unet2d).from_pretrained(os.path.join(MODELS, "tiny-sd", "unet")).double().eval()
    munets = {an: UNetMotionModel.from_unet2d(unet2d, ad).eval() for an, ad in adapters.items()}
    munets64 = {an: UNetMotionModel.from_unet2d(unet64, MotionAdapter.from_pretrained(
        os.path.join(MOTION, f"tiny-{an}"), torch_dtype=torch.float64)).eval() for an in adapters}
    results = {}
    for case, (kind, an, nf, fuse) in CASES.items():
        pipe = AnimateDiffVideoToVideoPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet2d,
                                               motion_adapter=adapters[an],
                                               scheduler=make_scheduler(kind, sched_cfg))
        pipe.set_progress_bar_config(disable=True)
        if fuse is not None:
            windows = context_windows(nf, CONTEXT_LENGTH, CONTEXT_OVERLAP)
            weights = context_weights(CONTEXT_LENGTH, fuse)
            windowed_forward_patch(pipe.unet, CONTEXT_LENGTH, CONTEXT_OVERLAP, fuse)
        else:
            windows, weights = [list(range(nf))], [1.0] * nf
        encoded = []
        hnd = vae.encoder.register_forward_hook(lambda mod, a, o: encoded.append(a[0].clone()))

        def run():
            G.RECORDED.clear()
            r = pipe(video=frames[:nf], prompt=PROMPT, negative_prompt=NEG, height=H, width=W,
                     num_inference_steps=STEPS, guidance_scale=GUIDANCE, strength=STRENGTH,
                     generator=torch.Generator().manual_seed(SEED), output_type="latent").frames
            return r, [(c, t_) for c, t_ in G.RECORDED]

        lat5, rec = run()
        hnd.remove()
        assert len(encoded) == 1 and torch.equal(encoded[0], x[:nf]), "the pipeline saw other frames"
        assert [c for c, _ in rec] == ["vae.py", "pipeline_animatediff_video2video.py"], [c for c, _ in rec]
        noise_vae, noise_add5 = rec[0][1], rec[1][1]
        assert tuple(noise_vae.shape) == (nf, 4, H // 2, W // 2) and tuple(noise_add5.shape) == (1, nf, 4, H // 2, W // 2)
        noise_add = noise_add5[0]
        if f"f{nf}.noise_vae" in gold:
            assert torch.equal(gold[f"f{nf}.noise_vae"], noise_vae) and torch.equal(gold[f"f{nf}.noise_add"], noise_add)
        gold[f"f{nf}.noise_vae"], gold[f"f{nf}.noise_add"] = noise_vae, noise_add
        final = lat5[0].permute(1, 0, 2, 3).contiguous()  # [1,4,F,h,w] -> [F,4,h,w]
        frames_out = (vae.decode(final / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
        gold[f"{case}.final_latents"], gold[f"{case}.frames_out"] = final, frames_out
        if fuse is not None:
            gold[f"{case}.windows"] = torch.tensor(windows, dtype=torch.long)
            gold[f"{case}.weights"] = torch.tensor(weights, dtype=torch.float32)
        c = im["cases"][case] = {"scheduler": kind, "adapter": f"tiny-{an}", "frames": nf, "fuse": fuse,
                                 "windows": windows, "weights": weights,
                                 "final_latents_absmax": float(final.abs().max()),
                                 "frames_out_range": [float(frames_out.min()), float(frames_out.max())]}
        lat2, _ = run()
        c["pipeline_rerun_identical"] = bool(torch.equal(lat2, lat5))
        # explicit loop, fp32 and fp64
        ref_lat, ref_img = reference_video2video(te, munets[an], vae, kind, make_scheduler(kind, sched_cfg), pos_ids,
                                                 neg_ids, x[:nf], noise_vae, noise_add, windows, weights, torch.float32)
        c["ref_loop_fp32_vs_pipeline"] = {"final_latents": stats(ref_lat, final), "frames_out": stats(ref_img, frames_out)}
        r64_lat, r64_img = reference_video2video(te64, munets64[an], vae64, kind, make_scheduler(kind, sched_cfg),
                                                 pos_ids, neg_ids, x[:nf], noise_vae, noise_add, windows, weights,
                                                 torch.float64)
        c["ref_loop_fp64_vs_pipeline_fp32"] = {"final_latents": stats(r64_lat, final),
                                               "frames_out": stats(r64_img, frames_out)}
        results[case] = final
        print(case, json.dumps({k: v for k, v in c.items() if k.startswith("ref") or k.startswith("pipeline")}))
    # how far apart the cases are (each must matter)
    im["differences_final_latents_max_abs"] = {
        "ddim.one vs euler.one": stats(results["ddim.one"], results["euler.one"])["max_abs"],
        "ddim.one vs v1.ddim.one": stats(results["ddim.one"], results["v1.ddim.one"])["max_abs"],
        "windows_pyramid vs windows_flat": stats(results["ddim.windows_pyramid"], results["ddim.windows_flat"])["max_abs"],
    }
    # ... and against the same run without windows (all 10 frames in one UNet call)
    ref_lat, _ = reference_video2video(te, munets["v2"], vae, "ddim", make_scheduler("ddim", sched_cfg), pos_ids,
                                       neg_ids, x[:10], gold["f10.noise_vae"], gold["f10.noise_add"],
                                       [list(range(10))], [1.0] * 10, torch.float32)
    im["differences_final_latents_max_abs"]["windows_pyramid vs one window of 10"] = \
        stats(results["ddim.windows_pyramid"], ref_lat)["max_abs"]
    im["window_grid_examples"] = {f"F={f},L={L},O={o}": context_windows(f, L, o)
                                  for f, L, o in [(4, 4, 2), (5, 4, 2), (10, 4, 2), (11, 4, 2), (16, 16, 4),
                                                  (17, 16, 4), (24, 16, 4), (32, 16, 4), (40, 16, 4), (7, 3, 1)]}
    im["weight_examples"] = {f"pyramid L={L}": context_weights(L, "pyramid") for L in range(1, 9)}
    save_file(gold, os.path.join(GOLD, "animatediff_img2img.safetensors"))


def main():
    base = StableDiffusionPipeline.from_pretrained(os.path.join(MODELS, "tiny-sd"), safety_checker=None,
                                                   requires_safety_checker=False)
    adapters = {an: MotionAdapter.from_pretrained(os.path.join(MOTION, f"tiny-{an}"), torch_dtype=torch.float32).eval()
                for an in ("v1", "v2")}
    meta = {"diffusers": diffusers.__version__, "torch": torch.__version__,
            "adapters": {an: {k: v for k, v in a.config.items() if not k.startswith("_")} for an, a in adapters.items()}}
    forward_goldens(base, adapters, meta)
    img2img_goldens(base, adapters, meta)
    with open(os.path.join(GOLD, "animatediff.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
    for f in ("animatediff_unet.safetensors", "animatediff_img2img.safetensors", "animatediff.json"):
        print(f, os.path.getsize(os.path.join(GOLD, f)))


if __name__ == "__main__":
    main()
