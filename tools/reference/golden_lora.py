#!/usr/bin/env python3
"""Random LoRAs for the tiny SD-1 fixture in both common formats, and goldens of diffusers fusing them.

LORAS (tests/fixtures/sd/lora/):
  kohya.safetensors   kohya / A1111 keys: lora_unet_<module with _>.lora_down.weight [r, in(, kh, kw)],
                      .lora_up.weight [out, r(, 1, 1)], .alpha (= 2, rank 4: scale alpha/rank = 0.5);
                      lora_te_<module>.… for the text encoder. Targets: every UNet attention linear (to_q/k/v,
                      to_out.0), the feed-forward linears, proj_in/proj_out (1x1 convs in tiny-sd), time_emb_proj
                      and resnet conv1/conv2 (3x3 conv LoRAs, as LCM-LoRA has); text encoder q/k/v/out_proj, fc1, fc2.
  peft.safetensors    diffusers / PEFT keys: unet.<module>.lora_A.weight / lora_B.weight, text_encoder.<module>.…,
                      rank 2, no alpha (scale 1), other modules (attn2 and the first resnet's conv1 only) and seed.
The LoRA weights are N(0, 0.2) (down) and N(0, 0.2) (up), large enough to change the outputs by O(0.1-1).

GOLDENS (tests/fixtures/sd/golden/tiny-sd/lora_<case>.safetensors), each from a fresh pipeline with
pipe.load_lora_weights(...) (several: adapter_name per file, set_adapters weights) + pipe.fuse_lora(lora_scale=S):
  kohya       kohya.safetensors, S = 0.8
  peft        peft.safetensors, S = 1.0
  both        kohya (0.8) + peft (1.0) together: the deltas add up
Keys: input_ids [1,77] (prompt0), text_out [1,77,32] = text encoder last_hidden_state; sample [2,4,24,32],
timestep (501), encoder_hidden_states [2,77,32] (from golden/tiny-sd/unet.safetensors), unet_out [2,4,24,32].
Also checked here: every LoRA module of the files was found and fused by diffusers (the fused weight differs from
the base by exactly scale·alpha/rank·up@down, to 1e-6), so the goldens cover every target.

Usage: python golden_lora.py   (writes into the repo)
"""
import os
import sys

import torch
from safetensors.torch import load_file, save_file as st_save

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import golden_sd as G  # noqa: E402
from golden_sd import save_file, tokenize  # noqa: E402

from diffusers import StableDiffusionImg2ImgPipeline  # noqa: E402

MODEL = os.path.join(REPO, "tests", "fixtures", "sd", "tiny-sd")
OUT = os.path.join(REPO, "tests", "fixtures", "sd", "lora")
GOLD = os.path.join(REPO, "tests", "fixtures", "sd", "golden", "tiny-sd")


def targets(module, kinds):
    """(name, weight shape) of the Linear/Conv2d modules whose name ends with one of kinds."""
    out = []
    for name, m in module.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and name.split(".")[-1] in kinds or \
                any(name.endswith(k) for k in kinds if "." in k):
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                out.append((name, tuple(m.weight.shape)))
    return out


def lora_pair(shape, rank, g):
    out_c, in_c = shape[0], shape[1]
    if len(shape) == 4:
        down = torch.randn(rank, in_c, shape[2], shape[3], generator=g) * 0.2
        up = torch.randn(out_c, rank, 1, 1, generator=g) * 0.2
    else:
        down = torch.randn(rank, in_c, generator=g) * 0.2
        up = torch.randn(out_c, rank, generator=g) * 0.2
    return down, up


def delta(down, up):
    if down.dim() == 4:
        return (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])
    return up @ down


def te_name(name):
    return name if name.startswith("text_model.") else "text_model." + name


def make_loras(pipe):
    g = torch.Generator().manual_seed(3)
    unet_kinds = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
                  "time_emb_proj", "conv1", "conv2"]
    te_kinds = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    kohya, expected_k = {}, {}
    for prefix, module, kinds, rename in [("lora_unet_", pipe.unet, unet_kinds, lambda n: n),
                                          ("lora_te_", pipe.text_encoder, te_kinds, te_name)]:
        for name, shape in targets(module, kinds):
            down, up = lora_pair(shape, 4, g)
            key = prefix + rename(name).replace(".", "_")
            kohya[key + ".lora_down.weight"] = down
            kohya[key + ".lora_up.weight"] = up
            kohya[key + ".alpha"] = torch.tensor(2.0)
            expected_k[(prefix, name)] = 0.5 * delta(down, up)
    peft, expected_p = {}, {}
    for prefix, module, kinds in [("unet.", pipe.unet, ["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
                                                        "down_blocks.0.resnets.0.conv1"]),
                                  ("text_encoder.", pipe.text_encoder, ["q_proj", "fc2"])]:
        for name, shape in targets(module, kinds):
            down, up = lora_pair(shape, 2, g)
            peft[f"{prefix}{name}.lora_A.weight"] = down
            peft[f"{prefix}{name}.lora_B.weight"] = up
            expected_p[("lora_unet_" if prefix == "unet." else "lora_te_", name)] = delta(down, up)
    os.makedirs(OUT, exist_ok=True)
    st_save({k: v.contiguous() for k, v in kohya.items()}, os.path.join(OUT, "kohya.safetensors"))
    st_save({k: v.contiguous() for k, v in peft.items()}, os.path.join(OUT, "peft.safetensors"))
    print(f"kohya: {len(expected_k)} modules, peft: {len(expected_p)} modules")
    return expected_k, expected_p


def weights(pipe):
    return {("lora_unet_", n): m.weight.detach().clone() for n, m in pipe.unet.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))} | \
           {("lora_te_", n): m.weight.detach().clone() for n, m in pipe.text_encoder.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


@torch.no_grad()
def run_case(case, files, expected):
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(MODEL, safety_checker=None, requires_safety_checker=False)
    base = weights(pipe)
    names, scales = [], []
    for i, (f, s) in enumerate(files):
        pipe.load_lora_weights(os.path.join(OUT, f), adapter_name=f"a{i}")
        names.append(f"a{i}")
        scales.append(s)
    pipe.set_adapters(names, adapter_weights=scales)
    pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
    pipe.unload_lora_weights()
    fused = weights(pipe)
    want = {}
    for (f, s), exp in zip(files, expected):
        for k, d in exp.items():
            want[k] = want.get(k, 0) + s * d
    worst, changed = 0.0, 0
    for k in fused:
        d = fused[k] - base[k]
        w = want.get(k)
        if w is None:
            assert d.abs().max() == 0, f"{case}: {k} changed but is no target"
        else:
            worst = max(worst, float((d - w.reshape(d.shape)).abs().max()))
            changed += 1
    assert changed == len(want), f"{case}: {changed} modules fused of {len(want)}"
    assert worst < 1e-5, f"{case}: fused delta off by {worst}"
    u = load_file(os.path.join(GOLD, "unet.safetensors"))
    ids = tokenize(pipe.tokenizer, [G.PROMPTS[0]])
    out = {"input_ids": ids, "text_out": pipe.text_encoder(ids).last_hidden_state,
           "sample": u["sample"], "timestep": u["timestep"], "encoder_hidden_states": u["encoder_hidden_states"]}
    out["unet_out"] = pipe.unet(u["sample"], u["timestep"], encoder_hidden_states=u["encoder_hidden_states"]).sample
    save_file(out, os.path.join(GOLD, f"lora_{case}.safetensors"))
    print(f"{case}: {changed} modules fused (delta error {worst:.1e}); unet_out range {float(out['unet_out'].abs().max()):.3f}")


def main():
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(MODEL, safety_checker=None, requires_safety_checker=False)
    ek, ep = make_loras(pipe)
    run_case("kohya", [("kohya.safetensors", 0.8)], [ek])
    run_case("peft", [("peft.safetensors", 1.0)], [ep])
    run_case("both", [("kohya.safetensors", 0.8), ("peft.safetensors", 1.0)], [ek, ep])


if __name__ == "__main__":
    main()
