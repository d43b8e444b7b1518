#!/usr/bin/env python3
"""A tiny LCM-style UNet (time_cond_proj_dim: the guidance scale embedded into the time embedding) beside
the tiny SD-1 fixture, and goldens of diffusers running it (diffusers 0.42.1).

MODEL (tests/fixtures/sd/tiny-lcm-unet/: config.json + diffusion_pytorch_model.safetensors): tiny-sd's UNet
config with time_cond_proj_dim = 16, tiny-sd's UNet weights copied, time_embedding.cond_proj random (seeded),
every tensor perturbed by 0.05*std*N(0,1), stored in float16. A test assembles a pipeline from tiny-sd with this UNet.

GOLDENS (tests/fixtures/sd/golden/tiny-sd/lcm_unet.safetensors):
  unet:    sample [2,4,24,32], timestep 501, encoder_hidden_states [2,77,32] (from unet.safetensors),
           w_embedding [2,16] = pipe.get_guidance_scale_embedding(tensor([7.0, 7.0]), 16)
           (guidance 8 - 1), out = unet(sample, t, ehs, timestep_cond=w_embedding).
  img2img: StableDiffusionImg2ImgPipeline(tiny-sd, unet = this) with LCMScheduler.from_config(tiny-sd's scheduler),
           prompt0, guidance 8.0 (an LCM UNet embeds it: no classifier-free guidance), 4 steps, strength 0.6
           (2 run), seed 42: image_in, noise_vae, noise_add, step0.noise (LCM draws before every step but the
           last), final_latents, image_out.

Usage: python golden_lcm_unet.py
"""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import golden_sd as G  # noqa: E402
from golden_sd import save_file  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from diffusers import LCMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel  # noqa: E402

BASE = os.path.join(REPO, "tests", "fixtures", "sd", "tiny-sd")
OUT = os.path.join(REPO, "tests", "fixtures", "sd", "tiny-lcm-unet")
GOLD = os.path.join(REPO, "tests", "fixtures", "sd", "golden", "tiny-sd")
W, H = 64, 48


@torch.no_grad()
def main():
    base = UNet2DConditionModel.from_pretrained(os.path.join(BASE, "unet"))
    cfg = dict(base.config)
    cfg["time_cond_proj_dim"] = 16
    unet = UNet2DConditionModel.from_config(cfg)
    missing = unet.load_state_dict(base.state_dict(), strict=False)
    assert missing.missing_keys == ["time_embedding.cond_proj.weight"], missing
    g = torch.Generator().manual_seed(11)
    for name, p in unet.named_parameters():
        n = torch.randn(p.shape, generator=g)
        if name == "time_embedding.cond_proj.weight":
            p.copy_(0.2 * n)
        else:
            p.add_(0.05 * p.std().nan_to_num(0.0) * n)
    # float16 on disk (half the size), float32 for the goldens: the values a port reads.
    unet.half().save_pretrained(OUT, safe_serialization=True)
    unet = UNet2DConditionModel.from_pretrained(OUT, torch_dtype=torch.float32).eval()

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(BASE, unet=unet, safety_checker=None,
                                                          requires_safety_checker=False)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    u = load_file(os.path.join(GOLD, "unet.safetensors"))
    w = pipe.get_guidance_scale_embedding(torch.tensor([7.0, 7.0]), embedding_dim=16)
    out = unet(u["sample"], u["timestep"], encoder_hidden_states=u["encoder_hidden_states"],
               timestep_cond=w).sample
    gold = {"sample": u["sample"], "timestep": u["timestep"], "encoder_hidden_states": u["encoder_hidden_states"],
            "w_embedding": w, "out": out}

    img = G.test_image(W, H)
    G.RECORDED.clear()
    lat = pipe(prompt=G.PROMPTS[0], image=img, strength=0.6, num_inference_steps=4, guidance_scale=8.0,
               generator=torch.Generator().manual_seed(42), output_type="latent").images
    draws = [t for _, t in G.RECORDED]
    print("draws", [c for c, _ in G.RECORDED])
    vae = pipe.vae
    image = (vae.decode(lat / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    gold.update({"image_in": pipe.image_processor.preprocess(img), "noise_vae": draws[0], "noise_add": draws[1],
                 "final_latents": lat, "image_out": image})
    for i, d in enumerate(draws[2:]):
        gold[f"step{i}.noise"] = d
    save_file(gold, os.path.join(GOLD, "lcm_unet.safetensors"))
    print("timesteps", pipe.scheduler.timesteps.tolist(), "out range", float(out.abs().max()))


if __name__ == "__main__":
    main()
