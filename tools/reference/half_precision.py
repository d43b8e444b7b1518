#!/usr/bin/env python3
"""How far diffusers / PyTorch land from their own f32 goldens when run in f16 and bf16 on the
CPU: the error a port in the same dtype may be allowed (crates/stylizer/tests/parity/half_precision.rs
allows a small multiple of it).

For the tiny fixtures (tests/fixtures/...), same inputs as the f32 goldens:
  tiny-sd, tiny-sd2: text encoder last_hidden_state, UNet out, VAE latent_mean and decoded
  tiny-sd controlnet: net a's residuals (worst of down_* and mid), guess_mode off
  tiny-sd motion: UNetMotionModel with adapter tiny-v2, case f16 (16 frames)
  taesd: encode (latents) and decode
  esrgan tiny: rrdb_x2 and srvgg_x4 outputs (basicsr arch, tools/reference/esrgan_arch.py)
Each entry: max abs difference from the f32 golden, weights and inputs cast to the dtype, the
output cast back to f32. Writes tests/fixtures/half_precision.json.

Usage: python half_precision.py
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")
sys.path.insert(0, HERE)
torch.set_num_threads(2)

from diffusers import (AutoencoderKL, AutoencoderTiny, ControlNetModel, MotionAdapter,  # noqa: E402
                       UNet2DConditionModel, UNetMotionModel)
from diffusers.models.attention_processor import AttnProcessor  # noqa: E402
from transformers import CLIPTextModel  # noqa: E402
from esrgan_arch import RRDBNet, SRVGGNetCompact  # noqa: E402

DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16}


def err(out, want):
    return float((out.float() - want.float()).abs().max())


def sd(variant, dt):
    base = os.path.join(FIX, "sd", variant)
    gold = os.path.join(FIX, "sd", "golden", variant)
    r = {}
    g = load_file(os.path.join(gold, "text_encoder.safetensors"))
    te = CLIPTextModel.from_pretrained(os.path.join(base, "text_encoder"), torch_dtype=dt).eval()
    with torch.no_grad():
        r["text_encoder"] = err(te(g["input_ids"]).last_hidden_state, g["last_hidden_state"])
    g = load_file(os.path.join(gold, "unet.safetensors"))
    unet = UNet2DConditionModel.from_pretrained(os.path.join(base, "unet"), torch_dtype=dt).eval()
    unet.set_attn_processor(AttnProcessor())
    with torch.no_grad():
        out = unet(g["sample"].to(dt), g["timestep"], encoder_hidden_states=g["encoder_hidden_states"].to(dt)).sample
    r["unet"] = err(out, g["out"])
    g = load_file(os.path.join(gold, "vae.safetensors"))
    vae = AutoencoderKL.from_pretrained(os.path.join(base, "vae"), torch_dtype=dt).eval()
    vae.set_attn_processor(AttnProcessor())
    with torch.no_grad():
        r["vae_encode"] = err(vae.encode(g["image"].to(dt)).latent_dist.mean, g["latent_mean"])
        r["vae_decode"] = err(vae.decode(g["latent_mean"].to(dt)).sample, g["decoded"])
    return r


def controlnet(dt):
    g = load_file(os.path.join(FIX, "sd", "golden", "tiny-sd", "controlnet.safetensors"))
    net = ControlNetModel.from_pretrained(os.path.join(FIX, "sd", "controlnet", "tiny-sd-a"), torch_dtype=dt).eval()
    net.set_attn_processor(AttnProcessor())
    with torch.no_grad():
        down, mid = net(g["sample"].to(dt), g["timestep"], encoder_hidden_states=g["encoder_hidden_states"].to(dt),
                        controlnet_cond=g["controlnet_cond"].to(dt), conditioning_scale=float(g["conditioning_scale"]),
                        guess_mode=False, return_dict=False)
    return max([err(d, g[f"a.down_{i}"]) for i, d in enumerate(down)] + [err(mid, g["a.mid"])])


def motion(dt):
    g = load_file(os.path.join(FIX, "sd", "golden", "tiny-sd", "animatediff_unet.safetensors"))
    unet = UNet2DConditionModel.from_pretrained(os.path.join(FIX, "sd", "tiny-sd", "unet"), torch_dtype=dt)
    adapter = MotionAdapter.from_pretrained(os.path.join(FIX, "sd", "motion", "tiny-v2"), torch_dtype=dt)
    m = UNetMotionModel.from_unet2d(unet, adapter).to(dt).eval()
    with torch.no_grad():
        out = m(g["f16.sample"].to(dt), g["timestep"], encoder_hidden_states=g["f16.encoder_hidden_states"].to(dt)).sample
    return err(out, g["v2.f16.out"])


def taesd(dt):
    g = load_file(os.path.join(FIX, "sd", "golden", "taesd", "taesd.safetensors"))
    m = AutoencoderTiny.from_pretrained(os.path.join(FIX, "sd", "taesd"), torch_dtype=dt).eval()
    with torch.no_grad():
        return {"encode": err(m.encode(g["image"].to(dt)).latents, g["latents"]),
                "decode": err(m.decode(g["decode_in"].to(dt)).sample, g["decoded"])}


def esrgan(dt):
    tiny = os.path.join(FIX, "esrgan", "tiny")
    g = load_file(os.path.join(tiny, "tiny_golden.safetensors"))
    nets = {"rrdb_x2": RRDBNet(3, 3, scale=2, num_feat=8, num_block=2, num_grow_ch=4),
            "srvgg_x4": SRVGGNetCompact(3, 3, num_feat=8, num_conv=3, upscale=4, act_type="prelu")}
    r = {}
    for name, net in nets.items():
        net.load_state_dict(load_file(os.path.join(tiny, f"{name}.safetensors")))
        net = net.to(dt).eval()
        with torch.no_grad():
            r[name] = err(net(g["input"].to(dt)), g[f"{name}.output"])
    return r


def main():
    res = {"torch": torch.__version__, "note": __doc__.split("\n\n")[0]}
    for name, dt in DTYPES.items():
        res[name] = {"tiny-sd": sd("tiny-sd", dt), "tiny-sd2": sd("tiny-sd2", dt),
                     "controlnet": {"tiny-sd-a": controlnet(dt)}, "motion": {"tiny-v2.f16": motion(dt)},
                     "taesd": taesd(dt), "esrgan": esrgan(dt)}
    path = os.path.join(FIX, "half_precision.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
