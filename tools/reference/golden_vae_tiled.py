#!/usr/bin/env python3
"""Golden for the tiled VAE (diffusers AutoencoderKL.enable_tiling(): tiled_encode / tiled_decode
with 25 % overlap and linear blending), on images larger than the VAE's sample_size.

For V in {tiny-sd, tiny-sd2} writes <out>/V/vae_tiled.safetensors:
  image         [1,3,H,W] in [-1,1] (skimage astronaut, PIL bicubic resize)
  latent_mean, latent_logvar   tiled encode (raw latent space)
  decoded       tiled decode of latent_mean
Sizes: tiny-sd 160x112 (latent 80x56, 32-latent tiles: 3x4 tiles), tiny-sd2 320x288 (latent 40x36,
2x2 tiles of 256 px).

Usage: python golden_vae_tiled.py [MODELS=.cache] [OUT=.cache/golden]
"""
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = {"tiny-sd": (160, 112), "tiny-sd2": (320, 288)}


@torch.no_grad()
def main():
    from diffusers import AutoencoderKL
    import skimage.data
    torch.set_num_threads(2)
    models = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, ".cache")
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, ".cache", "golden")
    for name, (w, h) in SIZES.items():
        vae = AutoencoderKL.from_pretrained(os.path.join(models, name, "vae")).eval()
        vae.enable_tiling()
        img = Image.fromarray(skimage.data.astronaut()).resize((w, h), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img)).permute(2, 0, 1)[None].float() / 127.5 - 1
        dist = vae.encode(x).latent_dist
        dec = vae.decode(dist.mean).sample
        os.makedirs(os.path.join(out, name), exist_ok=True)
        save_file({"image": x.contiguous(), "latent_mean": dist.mean.contiguous(),
                   "latent_logvar": dist.logvar.contiguous(), "decoded": dec.contiguous()},
                  os.path.join(out, name, "vae_tiled.safetensors"))
        print(name, tuple(x.shape), "->", tuple(dist.mean.shape), "->", tuple(dec.shape))


if __name__ == "__main__":
    main()
