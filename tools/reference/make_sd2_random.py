#!/usr/bin/env python3
"""A Stable Diffusion 2 base pipeline at real size with random weights, for memory and speed
measurements (speed and memory do not depend on the values; no hub access here).

UNet and VAE exactly as bench_torch.py builds them (sd2_unet(), the SD VAE), the text encoder
as its text_encoder case (OpenCLIP ViT-H text tower: 1024 wide, 23 layers, 16 heads, gelu),
the tiny-sd2 tokenizer (ids < 1000 are valid for the 49408-token embedding) and the
stable-diffusion-2-base scheduler config (DDIM, epsilon). diffusers layout, fp32 safetensors.

Also OUT_DIR/controlnet: ControlNetModel.from_unet(the UNet), SD-2-base-sized (1.5 GB).

Usage: python make_sd2_random.py OUT_DIR   (about 6.7 GB)
"""
import json
import os
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_torch import sd2_unet  # noqa: E402


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    unet = sd2_unet()
    unet.save_pretrained(os.path.join(out, "unet"), safe_serialization=True)
    # A ControlNet of the same size beside it (bench_sd_compare.py --controlnet).
    from diffusers import ControlNetModel
    ControlNetModel.from_unet(unet).save_pretrained(os.path.join(out, "controlnet"), safe_serialization=True)
    del unet
    from diffusers import AutoencoderKL
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                  block_out_channels=(128, 256, 512, 512), norm_num_groups=32, sample_size=512,
                  down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4).save_pretrained(os.path.join(out, "vae"))
    from transformers import CLIPTextConfig, CLIPTextModel
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                         num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
                         projection_dim=512, layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407)
    CLIPTextModel(cfg).save_pretrained(os.path.join(out, "text_encoder"))
    shutil.copytree(os.path.join(HERE, ".cache", "tiny-sd2", "tokenizer"), os.path.join(out, "tokenizer"),
                    dirs_exist_ok=True)
    os.makedirs(os.path.join(out, "scheduler"), exist_ok=True)
    with open(os.path.join(out, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump({"_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                   "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
                   "prediction_type": "epsilon", "set_alpha_to_one": False, "steps_offset": 1,
                   "trained_betas": None, "timestep_spacing": "leading"}, f, indent=1)
    print("wrote", out)


if __name__ == "__main__":
    main()
