#!/usr/bin/env python3
"""A TAESD-shaped tiny VAE with random weights and goldens for it (diffusers 0.42.1).

MODEL (tests/fixtures/sd/taesd/, diffusers layout): AutoencoderTiny() with madebyollin/taesd's config
(the constructor's defaults: 64 channels, encoder blocks (1,3,3,3), decoder (3,3,3,1), ReLU, latent 4,
scaling_factor 1.0; 2.4 M parameters), seeded random init, every tensor perturbed by 0.05·N(0,1) so that
biases are not zero, stored in float16 (4.9 MB) and read back as float32 for the goldens, so the golden
and a port read the same values.

GOLDENS (tests/fixtures/sd/golden/taesd/):
  taesd.safetensors   image [1,3,H,W] in [-1,1] (the golden_sd.py test image at 112x96), latents = vae.encode(image)
                      .latents [1,4,12,14]; decode_in [1,4,12,14] ~ N(0, 1.5); decoded = vae.decode(decode_in).sample
                      (includes the tanh(x/3)*3 clamp; values beyond ±3 in decode_in exercise it). Tolerance 1e-4.
  img2img_taesd.safetensors  StableDiffusionImg2ImgPipeline(tiny-sd2 with vae = this TAESD), prompt0, negative "",
                      DDIM, strength 0.6, 10 steps, guidance 7.5, seed 42: image_in, noise_add (the only draw: TAESD has
                      no posterior, diffusers' retrieve_latents reads .latents), final_latents, image_out
                      (= clamp(decode(final/sf)/2+0.5, 0, 1)). Tolerance 1e-3.

Usage: python golden_taesd.py   (writes into the repo)
"""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import golden_sd as G  # noqa: E402  (2 threads, randn recording)
from golden_sd import save_file  # noqa: E402

from diffusers import AutoencoderTiny, DDIMScheduler, StableDiffusionImg2ImgPipeline  # noqa: E402

MODELS = os.path.join(REPO, "tests", "fixtures", "sd")
OUT_MODEL = os.path.join(MODELS, "taesd")
OUT_GOLD = os.path.join(MODELS, "golden", "taesd")
W, H = 112, 96


@torch.no_grad()
def main():
    torch.manual_seed(0)
    vae = AutoencoderTiny()
    g = torch.Generator().manual_seed(7)
    for p in vae.parameters():
        p.add_(0.05 * torch.randn(p.shape, generator=g))
    vae.half().save_pretrained(OUT_MODEL, safe_serialization=True)
    vae = AutoencoderTiny.from_pretrained(OUT_MODEL, torch_dtype=torch.float32).eval()
    print("params", sum(p.numel() for p in vae.parameters()))

    os.makedirs(OUT_GOLD, exist_ok=True)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(os.path.join(MODELS, "tiny-sd2"), safety_checker=None,
                                                          requires_safety_checker=False)
    image = pipe.image_processor.preprocess(G.test_image(W, H))
    latents = vae.encode(image).latents
    decode_in = torch.randn(latents.shape, generator=g) * 1.5
    decoded = vae.decode(decode_in).sample
    save_file({"image": image, "latents": latents, "decode_in": decode_in, "decoded": decoded},
              os.path.join(OUT_GOLD, "taesd.safetensors"))
    print("latents range", float(latents.min()), float(latents.max()), "decoded range", float(decoded.min()),
          float(decoded.max()))

    pipe.vae = vae
    pipe.register_modules(vae=vae)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    G.RECORDED.clear()
    out = pipe(prompt=G.PROMPTS[0], negative_prompt="", image=G.test_image(W, H), strength=0.6,
               num_inference_steps=10, guidance_scale=7.5, generator=torch.Generator().manual_seed(42),
               output_type="latent").images
    draws = [t for _, t in G.RECORDED]
    assert len(draws) == 1, [c for c, _ in G.RECORDED]
    img = (vae.decode(out / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    save_file({"image_in": image, "noise_add": draws[0], "final_latents": out, "image_out": img},
              os.path.join(OUT_GOLD, "img2img_taesd.safetensors"))
    print("wrote", OUT_MODEL, OUT_GOLD)


if __name__ == "__main__":
    main()
