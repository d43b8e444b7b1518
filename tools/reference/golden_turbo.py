#!/usr/bin/env python3
"""Golden for an SD-Turbo-class sampling setup on the tiny SD-2 fixture (diffusers 0.42.1).

SD-Turbo is the SD 2.1 architecture distilled for 1-4 steps: EulerDiscreteScheduler with
timestep_spacing "trailing", guidance 0 (no classifier-free guidance), and in img2img
steps x strength >= 1. The weights do not change how a port samples, so the tiny SD-2 model
stands in for them; what is tested is the schedule and the no-guidance path.

Writes tests/fixtures/sd/golden/tiny-sd2/img2img_turbo.safetensors and img2img_turbo.json:
  StableDiffusionImg2ImgPipeline(tiny-sd2, scheduler = EulerDiscreteScheduler.from_config(its config,
  timestep_spacing="trailing")), prompt0, guidance 0.0, 2 steps, strength 0.5 (1 step runs: t = 499),
  seed 42. Keys: image_in, noise_vae, noise_add (Euler draws nothing else), final_latents, image_out.
  The JSON holds the scheduler config the pipeline used (a port builds its scheduler from it) and the
  timesteps.

Usage: python golden_turbo.py
"""
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import golden_sd as G  # noqa: E402
from golden_sd import save_file  # noqa: E402

from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline  # noqa: E402

MODEL = os.path.join(REPO, "tests", "fixtures", "sd", "tiny-sd2")
OUT = os.path.join(REPO, "tests", "fixtures", "sd", "golden", "tiny-sd2")
W, H = 112, 96


@torch.no_grad()
def main():
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(MODEL, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    pipe.set_progress_bar_config(disable=True)
    img = G.test_image(W, H)
    G.RECORDED.clear()
    lat = pipe(prompt=G.PROMPTS[0], image=img, strength=0.5, num_inference_steps=2, guidance_scale=0.0,
               generator=torch.Generator().manual_seed(42), output_type="latent").images
    draws = [t for _, t in G.RECORDED]
    assert len(draws) == 2, [c for c, _ in G.RECORDED]
    vae = pipe.vae
    image = (vae.decode(lat / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    save_file({"image_in": pipe.image_processor.preprocess(img), "noise_vae": draws[0], "noise_add": draws[1],
               "final_latents": lat, "image_out": image}, os.path.join(OUT, "img2img_turbo.safetensors"))
    config = {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}
    config["_class_name"] = "EulerDiscreteScheduler"
    with open(os.path.join(OUT, "img2img_turbo.json"), "w") as f:
        json.dump({"scheduler_config": config, "timesteps": pipe.scheduler.timesteps.tolist(),
                   "prompt": G.PROMPTS[0], "guidance": 0.0, "steps": 2, "strength": 0.5}, f, indent=1)
    print("timesteps", pipe.scheduler.timesteps.tolist())


if __name__ == "__main__":
    main()
