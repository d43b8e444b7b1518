#!/usr/bin/env python3
"""Scheduler-only goldens: diffusers' timestep/sigma tables and step maths, no UNet involved.

For every config in CONFIGS (the SD-1/2 scheduler configs and variations that exercise each code
path: spacings, steps_offset, beta schedules, zero-SNR, prediction types, Karras sigmas,
final sigma, solver type) and every scheduler kind, builds `Cls.from_config(config)` exactly as
an img2img pipeline does and records, for several step counts:

  {case}/{kind}/{steps}/timesteps      scheduler.timesteps (float64 copy)
  {case}/{kind}/{steps}/sigmas         scheduler.sigmas, for sigma-based schedulers
  {case}/{kind}/alphas_cumprod         (float32)
and one img2img-like run at STEPS_RUN steps entered at index T_START (set_begin_index), fed
with fixed pseudo-random model outputs and noises:
  {case}/{kind}/run/x0, /noise_add, /start      add_noise(x0, noise_add, timesteps[T_START])
  {case}/{kind}/run/step{i}.model_output, .noise (when drawn), .input (scale_model_input), .after

Writes OUT/configs.json (case -> config dict) and OUT/schedulers.safetensors.
Usage: python golden_schedulers.py OUT_DIR
"""
import json
import zlib
import os
import sys

import torch
from safetensors.torch import save_file

import diffusers.schedulers.scheduling_euler_ancestral_discrete as sea
import diffusers.schedulers.scheduling_lcm as slcm
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, LCMScheduler)

SD = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
      "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon"}
CONFIGS = {
    # SD 1.x/2.x as saved by today's diffusers (tiny fixtures): leading spacing, offset 1
    "sd_leading": dict(SD, timestep_spacing="leading"),
    # old SD configs have no timestep_spacing: each class applies its own default
    "sd_default_spacing": dict(SD),
    "sd_trailing_v": dict(SD, timestep_spacing="trailing", prediction_type="v_prediction"),
    "sd_linspace": dict(SD, timestep_spacing="linspace"),
    "linear_defaults": {"beta_schedule": "linear"},
    "cosine_zero_snr_v": {"beta_schedule": "squaredcos_cap_v2", "rescale_betas_zero_snr": True,
                          "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    "sd_karras_sigma_min": dict(SD, timestep_spacing="leading", use_karras_sigmas=True,
                                final_sigmas_type="sigma_min"),
    "sd_heun_sample": dict(SD, solver_type="heun", prediction_type="sample", timestep_spacing="linspace"),
    "sd_set_alpha_one_clip": dict(SD, set_alpha_to_one=True, clip_sample=True, clip_sample_range=0.5,
                                  original_inference_steps=40, timestep_scaling=5.0),
}
KINDS = ("ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "lcm")
STEP_COUNTS = (1, 3, 4, 7, 10, 25, 50)
STEPS_RUN, T_START = 10, 3
SHAPE = (1, 4, 3, 5)

# Record the noise the ancestral steps draw, in order.
DRAWN = []
for mod in (sea, slcm):
    orig = mod.randn_tensor

    def rec(*a, _orig=orig, **k):
        out = _orig(*a, **k)
        DRAWN.append(out.clone())
        return out
    mod.randn_tensor = rec


def make(kind, cfg):
    if kind == "dpmpp_2m_karras":
        return DPMSolverMultistepScheduler.from_config(cfg, use_karras_sigmas=True)
    cls = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "euler_a": EulerAncestralDiscreteScheduler,
           "dpmpp_2m": DPMSolverMultistepScheduler, "lcm": LCMScheduler}[kind]
    return cls.from_config(cfg)


def applicable(kind, cfg):
    pred = cfg.get("prediction_type", "epsilon")
    if kind == "euler_a" and pred == "sample":
        return False  # not implemented in diffusers either
    return True


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    t = {}
    for case, cfg in CONFIGS.items():
        for kind in KINDS:
            if not applicable(kind, cfg):
                continue
            p = f"{case}/{kind}"
            s = make(kind, cfg)
            t[f"{p}/alphas_cumprod"] = s.alphas_cumprod.clone()
            for n in STEP_COUNTS:
                s = make(kind, cfg)
                try:
                    s.set_timesteps(n)
                except ValueError:
                    continue  # e.g. LCM with more steps than original_inference_steps
                t[f"{p}/{n}/timesteps"] = s.timesteps.to(torch.float64)
                if kind not in ("ddim", "lcm"):
                    t[f"{p}/{n}/sigmas"] = s.sigmas.to(torch.float64)
            s = make(kind, cfg)
            s.set_timesteps(STEPS_RUN)
            if hasattr(s, "set_begin_index"):
                s.set_begin_index(T_START)
            g = torch.Generator().manual_seed(zlib.crc32(p.encode()))
            x0 = torch.randn(SHAPE, generator=g)
            noise = torch.randn(SHAPE, generator=g)
            ts = s.timesteps
            lat = s.add_noise(x0, noise, ts[T_START:T_START + 1])
            t[f"{p}/run/x0"], t[f"{p}/run/noise_add"], t[f"{p}/run/start"] = x0, noise, lat
            for i, tt in enumerate(ts[T_START:]):
                inp = s.scale_model_input(lat, tt)
                mo = torch.randn(SHAPE, generator=g)
                DRAWN.clear()
                lat = s.step(mo, tt, lat, generator=torch.Generator().manual_seed(i)).prev_sample
                t[f"{p}/run/step{i}.input"] = inp
                t[f"{p}/run/step{i}.model_output"] = mo
                t[f"{p}/run/step{i}.after"] = lat
                if DRAWN:
                    t[f"{p}/run/step{i}.noise"] = DRAWN[0]
    save_file({k: v.clone().contiguous() for k, v in t.items()}, os.path.join(out_dir, "schedulers.safetensors"))
    with open(os.path.join(out_dir, "configs.json"), "w") as f:
        json.dump(CONFIGS, f, indent=1, sort_keys=True)
    print(len(t), "tensors")


if __name__ == "__main__":
    main()
