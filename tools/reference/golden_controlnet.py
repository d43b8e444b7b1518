#!/usr/bin/env python3
"""Tiny random ControlNets beside the tiny SD fixtures, and goldens for them (diffusers 0.42.1).

NETS (tests/fixtures/sd/controlnet/, diffusers layout: config.json + diffusion_pytorch_model.safetensors):
  tiny-sd-a, tiny-sd-b   ControlNetModel.from_unet(tiny-sd's UNet, conditioning_embedding_out_channels=(16, 32)),
                         b with controlnet_conditioning_channel_order "bgr"
  tiny-sd2-a             from_unet(tiny-sd2's UNet, conditioning_embedding_out_channels=(8, 16, 16, 32))
  Stored in float16 (the goldens are computed from the same values read back as float32).
  Every tensor is perturbed (seeded): the copied UNet weights by 0.1·std(tensor)·N(0,1) (so a port that reads
  the UNet's weights instead of the net's fails), and the zero-initialised ones (controlnet_down_blocks.*,
  controlnet_mid_block, controlnet_cond_embedding.conv_out) set to 0.1·N(0,1): left at zero, every residual is
  exactly 0 and proves nothing.
SINGLE FILES (original ControlNet layout, the inverse of diffusers' convert_controlnet_checkpoint):
  tiny-sd-a.pth          torch.save({"state_dict": ...}) with every key under control_model. (ControlNet 1.0 files)
  tiny-sd2-a.safetensors no prefix (control_v11p_sd21_*.safetensors); input_hint_block.0..14 as the real nets.
  Check: tiny-sd2-a.safetensors converted back by diffusers' own convert_controlnet_checkpoint equals the folder's
  state dict exactly (diffusers hard-codes input_hint_block.14 as conv_out, so the 2-level tiny-sd net cannot be
  checked that way: the same inverse writes it).

GOLDENS (tests/fixtures/sd/golden/<V>/):
  controlnet.safetensors  forward of net a (and b for tiny-sd):
      in:  sample [2,4,h,w], timestep (int64 scalar 501), encoder_hidden_states [2,77,D] (="" and prompt0),
           controlnet_cond [2,3,H,W] in [0,1] (row 0 = the test image, row 1 = its Canny edges),
           conditioning_scale (f32 scalar 0.7)
      out: <net>.down_0 .. <net>.down_N, <net>.mid        (guess_mode False)
           <net>.guess.down_0 .. , <net>.guess.mid         (guess_mode True: logspace(-1, 0) scales)
  controlnet_img2img.safetensors   StableDiffusionControlNetImg2ImgPipeline, DDIM, strength 0.6, 10 steps (6 run),
      guidance 7.5, seed 42, prompt0, negative "", every random draw recorded (noise_vae, noise_add per case:
      the same draws for all cases). Cases <case>.final_latents [1,4,h,w], <case>.image_out [1,3,H,W]:
        one      net a, control = control_canny, scale 1.0
        window   net a, control_canny, scale 1.0, control_guidance_start 0.2, end 0.7 (keep = 0,1,1,1,0,0)
        guess    net a, control_canny, scale 1.0, guess_mode True
        two      (tiny-sd) nets [a, b], controls [control_canny, control_frame], scales [1.0, 0.5]
      in: image_in [1,3,H,W] in [-1,1] (the test image), control_canny [1,3,H,W] = cv2.Canny(uint8 RGB, 100, 200)
      repeated to 3 channels /255, control_frame [1,3,H,W] = the image in [0,1].

CANNY (tests/fixtures/canny/): <name>.png (RGB crops of scikit-image's astronaut, coffee, chelsea) and
<name>_canny.png = cv2.Canny(rgb, 100, 200) (aperture 3, L1), the annotator's call on a 3-channel image.

Usage: python golden_controlnet.py   (models from tests/fixtures/sd; writes into the repo)
"""
import json
import os
import sys

import cv2
import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import golden_sd as G  # noqa: E402  (2 threads, randn recording)
from golden_sd import save_file, stats, tokenize  # noqa: E402
import make_single_file_sd as S  # noqa: E402

import diffusers  # noqa: E402
from diffusers import (ControlNetModel, DDIMScheduler, StableDiffusionControlNetImg2ImgPipeline,  # noqa: E402
                       StableDiffusionImg2ImgPipeline)
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint  # noqa: E402
from safetensors.torch import load_file, save_file as st_save  # noqa: E402

MODELS = os.path.join(REPO, "tests", "fixtures", "sd")
NETS = os.path.join(MODELS, "controlnet")
GOLD = os.path.join(MODELS, "golden")
CANNY = os.path.join(REPO, "tests", "fixtures", "canny")
PROMPT = G.PROMPTS[0]
VARIANTS = {  # name: (image W, H, conditioning_embedding_out_channels, nets)
    "tiny-sd": (64, 48, (16, 32), ("a", "b")),
    "tiny-sd2": (112, 96, (8, 16, 16, 32), ("a",)),
}


def canny(rgb_uint8):
    return cv2.Canny(rgb_uint8, 100, 200)


def canny_tensor(img):
    e = canny(np.array(img))
    return torch.from_numpy(np.repeat(e[None], 3, 0)).float()[None] / 255.0


def make_net(unet, channels, seed, bgr):
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels,
                                    controlnet_conditioning_channel_order="bgr" if bgr else "rgb")
    g = torch.Generator().manual_seed(seed)
    zero = ("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.conv_out.")
    with torch.no_grad():
        for k, p in net.named_parameters():
            n = torch.randn(p.shape, generator=g)
            if k.startswith(zero):
                p.copy_(0.1 * n)
            else:
                p.add_(0.1 * p.std().nan_to_num(0.0) * n)
    return net.eval()


def to_original(sd, cfg, prefix):
    """diffusers ControlNet state dict -> original layout (inverse of convert_controlnet_checkpoint)."""
    n_blocks = len([k for k in sd if k.startswith("controlnet_cond_embedding.blocks.") and k.endswith(".weight")])
    unet_cfg = dict(cfg, up_block_types=[])
    out = {}
    for k, v in sd.items():
        if k.startswith("controlnet_cond_embedding.conv_in."):
            n = "input_hint_block.0." + k.rsplit(".", 1)[1]
        elif k.startswith("controlnet_cond_embedding.blocks."):
            j = int(k.split(".")[2])
            n = f"input_hint_block.{2 * (j + 1)}." + k.rsplit(".", 1)[1]
        elif k.startswith("controlnet_cond_embedding.conv_out."):
            n = f"input_hint_block.{2 * (n_blocks + 1)}." + k.rsplit(".", 1)[1]
        elif k.startswith("controlnet_down_blocks."):
            i = k.split(".")[1]
            n = f"zero_convs.{i}.0." + k.rsplit(".", 1)[1]
        elif k.startswith("controlnet_mid_block."):
            n = "middle_block_out.0." + k.rsplit(".", 1)[1]
        else:
            (full,) = S.unet_to_ldm({k: v}, unet_cfg).keys()
            n = full[len("model.diffusion_model."):]
        out[prefix + n] = v.half().contiguous()
    return out


def forward_case(net, sample, t, ehs, cond, scale, guess):
    r = net(sample, t, encoder_hidden_states=ehs, controlnet_cond=cond, conditioning_scale=scale,
            guess_mode=guess, return_dict=False)
    return list(r[0]), r[1]


@torch.no_grad()
def run_variant(name):
    W, H, channels, net_names = VARIANTS[name]
    path = os.path.join(MODELS, name)
    base = StableDiffusionImg2ImgPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)
    unet, vae, te, tok = base.unet, base.vae, base.text_encoder, base.tokenizer
    nets = {}
    for i, n in enumerate(net_names):
        net = make_net(unet, channels, 100 + i, bgr=(n == "b"))
        d = os.path.join(NETS, f"{name}-{n}")
        # Stored in float16 (half the size), read back as float32: the goldens use exactly
        # the values a port reads.
        net.half().save_pretrained(d, safe_serialization=True)
        nets[n] = ControlNetModel.from_pretrained(d, torch_dtype=torch.float32).eval()
    cfg = dict(nets["a"].config)
    sd = {k: v for k, v in nets["a"].state_dict().items()}
    if name == "tiny-sd":
        single = os.path.join(NETS, f"{name}-a.pth")
        torch.save({"state_dict": to_original(sd, cfg, "control_model.")}, single)
    else:
        single = os.path.join(NETS, f"{name}-a.safetensors")
        st_save(to_original(sd, cfg, ""), single)
        back = convert_controlnet_checkpoint(load_file(single), cfg)
        assert set(back) == set(sd), sorted(set(back) ^ set(sd))[:10]
        for k in sd:
            assert torch.equal(back[k].float(), sd[k]), k
        print(f"{name}: single file converts back exactly ({len(sd)} tensors)")

    img = G.test_image(W, H)
    f = base.vae_scale_factor
    h, w = H // f, W // f
    ids = tokenize(tok, ["", PROMPT])
    hs = te(ids).last_hidden_state
    g = torch.Generator().manual_seed(1234)
    sample = torch.randn(2, 4, h, w, generator=g)
    t = torch.tensor(501, dtype=torch.long)
    control_canny = canny_tensor(img)
    control_frame = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255.0
    cond = torch.cat([control_frame, control_canny])
    scale = 0.7
    out = {"sample": sample, "timestep": t, "encoder_hidden_states": hs, "controlnet_cond": cond,
           "conditioning_scale": torch.tensor(scale, dtype=torch.float32)}
    for n, net in nets.items():
        for guess in (False, True):
            down, mid = forward_case(net, sample, t, hs, cond, scale, guess)
            key = f"{n}.guess" if guess else n
            for i, d in enumerate(down):
                out[f"{key}.down_{i}"] = d
            out[f"{key}.mid"] = mid
            assert all(d.abs().max() > 0 for d in down) and mid.abs().max() > 0, "a zero residual"
    save_file(out, os.path.join(GOLD, name, "controlnet.safetensors"))

    # img2img cases, every case with the same recorded draws
    cases = {
        "one": dict(nets=["a"], controls=[control_canny], scale=1.0),
        "window": dict(nets=["a"], controls=[control_canny], scale=1.0, control_guidance_start=0.2,
                       control_guidance_end=0.7),
        "guess": dict(nets=["a"], controls=[control_canny], scale=1.0, guess_mode=True),
    }
    if "b" in nets:
        cases["two"] = dict(nets=["a", "b"], controls=[control_canny, control_frame], scale=[1.0, 0.5])
    gold = {"image_in": base.image_processor.preprocess(img), "control_canny": control_canny,
            "control_frame": control_frame}
    meta = {"variant": name, "prompt": PROMPT, "negative_prompt": "", "strength": 0.6, "steps": 10,
            "guidance": 7.5, "scheduler": "ddim", "cases": {}, "diffusers": diffusers.__version__}
    draws = None
    for case, c in cases.items():
        cn = [nets[n] for n in c["nets"]]
        pipe = StableDiffusionControlNetImg2ImgPipeline(
            vae=vae, text_encoder=te, tokenizer=tok, unet=unet, controlnet=cn[0] if len(cn) == 1 else cn,
            scheduler=DDIMScheduler.from_config(base.scheduler.config), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        G.RECORDED.clear()
        res = pipe(prompt=PROMPT, negative_prompt="", image=img,
                   control_image=c["controls"][0] if len(cn) == 1 else c["controls"],
                   strength=0.6, num_inference_steps=10, guidance_scale=7.5,
                   controlnet_conditioning_scale=c["scale"], guess_mode=c.get("guess_mode", False),
                   control_guidance_start=c.get("control_guidance_start", 0.0),
                   control_guidance_end=c.get("control_guidance_end", 1.0),
                   generator=torch.Generator().manual_seed(42), output_type="latent")
        latents = res.images
        image = (vae.decode(latents / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
        rec = [t for _, t in G.RECORDED]
        assert len(rec) == 2, [c for c, _ in G.RECORDED]
        if draws is None:
            draws = rec
            gold["noise_vae"], gold["noise_add"] = rec
        else:
            assert all(torch.equal(a, b) for a, b in zip(draws, rec)), "draws differ between cases"
        gold[f"{case}.final_latents"] = latents
        gold[f"{case}.image_out"] = image
        meta["cases"][case] = {k: v for k, v in c.items() if k != "controls" and k != "nets"} | {"nets": c["nets"]}
    # the controls must matter: every case differs from plain img2img
    G.RECORDED.clear()
    plain = base(prompt=PROMPT, negative_prompt="", image=img, strength=0.6, num_inference_steps=10,
                 guidance_scale=7.5, generator=torch.Generator().manual_seed(42), output_type="latent").images
    for case in cases:
        meta["cases"][case]["max_abs_vs_plain_img2img"] = stats(gold[f"{case}.final_latents"], plain)["max_abs"]
    save_file(gold, os.path.join(GOLD, name, "controlnet_img2img.safetensors"))
    with open(os.path.join(GOLD, name, "controlnet_img2img.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
    print(name, json.dumps(meta["cases"]))


def canny_fixtures():
    import skimage.data as d
    os.makedirs(CANNY, exist_ok=True)
    for name, img, box in [("astronaut", d.astronaut(), (60, 0, 316, 192)),
                           ("coffee", d.coffee(), (100, 50, 356, 242)),
                           ("chelsea", d.chelsea(), (50, 30, 306, 222))]:
        crop = np.ascontiguousarray(np.array(Image.fromarray(img).convert("RGB").crop(box)))
        Image.fromarray(crop).save(os.path.join(CANNY, f"{name}.png"))
        Image.fromarray(canny(crop)).save(os.path.join(CANNY, f"{name}_canny.png"))


if __name__ == "__main__":
    os.makedirs(NETS, exist_ok=True)
    canny_fixtures()
    for v in VARIANTS:
        run_variant(v)
