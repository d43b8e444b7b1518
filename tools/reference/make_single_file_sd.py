#!/usr/bin/env python3
"""Write the tiny diffusers pipelines as single-file checkpoints in the original SD layout.

The inverse of diffusers' single-file loader (loaders/single_file_utils.py), so that the
project's single-file loading can be tested without real checkpoints:

  <out>/tiny-sd.safetensors   from tiny-sd  (SD-1-like: OpenAI CLIP text encoder under
                              cond_stage_model.transformer.*)
  <out>/tiny-sd2.ckpt         from tiny-sd2 (SD-2-like: OpenCLIP text tower under
                              cond_stage_model.model.*, fused attn.in_proj_*, plus the
                              text_projection that real OpenCLIP checkpoints carry),
                              a torch.save({"state_dict": ...}) zip like the original .ckpt files

UNet under model.diffusion_model.* (input_blocks / middle_block / output_blocks), VAE under
first_stage_model.* (down/mid/up, attention as 1x1 convs). fp32, same tensors as the folders.

Check: each file is loaded back with diffusers' own StableDiffusionPipeline.from_single_file
(config = the tiny folder, offline) and every component's state_dict must equal the folder's
exactly; the script fails otherwise.

Usage: python make_single_file_sd.py [SRC=.cache] [OUT=.cache/single-file]
"""
import os
import re
import sys

import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))

RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
          ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]


def sub_first(s, pairs):
    for a, b in pairs:
        if s.startswith(a + "."):
            return b + s[len(a):]
    return s


def unet_to_ldm(sd, cfg):
    lpb = cfg["layers_per_block"]
    per = lpb + 1
    up_has_attn = ["CrossAttn" in t for t in cfg["up_block_types"]]
    out = {}
    for k, v in sd.items():
        m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.*)", k)
        u = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.*)", k)
        if k.startswith("time_embedding.linear_1."):
            n = "time_embed.0." + k.split(".", 2)[2]
        elif k.startswith("time_embedding.linear_2."):
            n = "time_embed.2." + k.split(".", 2)[2]
        elif k.startswith("conv_in."):
            n = "input_blocks.0.0." + k[len("conv_in."):]
        elif k.startswith("conv_norm_out."):
            n = "out.0." + k[len("conv_norm_out."):]
        elif k.startswith("conv_out."):
            n = "out.2." + k[len("conv_out."):]
        elif m:
            b, kind, l, rest = int(m[1]), m[2], int(m[3]), m[4]
            if kind == "resnets":
                n = f"input_blocks.{1 + b * per + l}.0.{sub_first(rest, RESNET)}"
            elif kind == "attentions":
                n = f"input_blocks.{1 + b * per + l}.1.{rest}"
            else:
                n = f"input_blocks.{1 + b * per + lpb}.0.op.{rest[len('conv.'):]}"
        elif k.startswith("mid_block."):
            rest = k[len("mid_block."):]
            rest = rest.replace("resnets.0.", "0.", 1).replace("attentions.0.", "1.", 1).replace("resnets.1.", "2.", 1)
            i, r = rest.split(".", 1)
            n = f"middle_block.{i}.{sub_first(r, RESNET) if i != '1' else r}"
        elif u:
            b, kind, l, rest = int(u[1]), u[2], int(u[3]), u[4]
            if kind == "resnets":
                n = f"output_blocks.{b * per + l}.0.{sub_first(rest, RESNET)}"
            elif kind == "attentions":
                n = f"output_blocks.{b * per + l}.1.{rest}"
            else:
                n = f"output_blocks.{b * per + lpb}.{2 if up_has_attn[b] else 1}.{rest}"
        else:
            raise KeyError(k)
        out["model.diffusion_model." + n] = v
    return out


def vae_to_ldm(sd, cfg):
    nb = len(cfg["block_out_channels"])
    out = {}
    for k, v in sd.items():
        part, rest = k.split(".", 1)
        if part in ("quant_conv", "post_quant_conv"):
            out["first_stage_model." + k] = v
            continue
        rest = rest.replace("conv_shortcut.", "nin_shortcut.")
        if rest.startswith("conv_norm_out."):
            rest = "norm_out." + rest[len("conv_norm_out."):]
        elif rest.startswith("mid_block.resnets.0."):
            rest = "mid.block_1." + rest[len("mid_block.resnets.0."):]
        elif rest.startswith("mid_block.resnets.1."):
            rest = "mid.block_2." + rest[len("mid_block.resnets.1."):]
        elif rest.startswith("mid_block.attentions.0."):
            r = rest[len("mid_block.attentions.0."):]
            r = sub_first(r, [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                              ("to_out.0", "proj_out")])
            if r.endswith("weight") and v.dim() == 2:
                v = v[:, :, None, None]
            rest = "mid.attn_1." + r
        else:
            m = re.match(r"down_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0)\.(.*)", rest)
            u = re.match(r"up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.*)", rest)
            if m:
                rest = (f"down.{m[1]}.block.{m[3]}.{m[4]}" if m[3] is not None
                        else f"down.{m[1]}.downsample.{m[4]}")
            elif u:
                i = nb - 1 - int(u[1])
                rest = (f"up.{i}.block.{u[3]}.{u[4]}" if u[3] is not None else f"up.{i}.upsample.{u[4]}")
            elif not (rest.startswith("conv_in.") or rest.startswith("conv_out.")):
                raise KeyError(k)
        out[f"first_stage_model.{part}.{rest}"] = v
    return out


def with_text_model(sd):
    """transformers >= 5.6 saves CLIPTextModel without the `text_model.` level; checkpoints have it."""
    return {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in sd.items()}


def clip_to_ldm(sd):
    return {"cond_stage_model.transformer." + k: v for k, v in with_text_model(sd).items()}


def open_clip_to_ldm(sd, cfg):
    p = "cond_stage_model.model."
    out = {}
    layers = {}
    for k, v in with_text_model(sd).items():
        if k == "text_model.embeddings.token_embedding.weight":
            out[p + "token_embedding.weight"] = v
        elif k == "text_model.embeddings.position_embedding.weight":
            out[p + "positional_embedding"] = v
        elif k.startswith("text_model.final_layer_norm."):
            out[p + "ln_final." + k.rsplit(".", 1)[1]] = v
        else:
            m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.*)", k)
            i, rest = m[1], m[2]
            q = re.match(r"self_attn\.(q|k|v)_proj\.(weight|bias)", rest)
            if q:
                layers.setdefault((i, q[2]), {})[q[1]] = v
                continue
            rest = sub_first(rest, [("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                                    ("self_attn.out_proj", "attn.out_proj"), ("mlp.fc1", "mlp.c_fc"),
                                    ("mlp.fc2", "mlp.c_proj")])
            out[f"{p}transformer.resblocks.{i}.{rest}"] = v
    for (i, kind), qkv in layers.items():
        out[f"{p}transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
    # Real OpenCLIP checkpoints carry the projection (width x embed dim); diffusers reads the width from it.
    g = torch.Generator().manual_seed(0)
    out[p + "text_projection"] = torch.randn(cfg["hidden_size"], cfg["projection_dim"], generator=g)
    return out


def read(folder, comp, fname):
    import json
    with open(os.path.join(folder, comp, "config.json")) as f:
        cfg = json.load(f)
    return load_file(os.path.join(folder, comp, fname)), cfg


def convert(folder, open_clip):
    unet, ucfg = read(folder, "unet", "diffusion_pytorch_model.safetensors")
    vae, vcfg = read(folder, "vae", "diffusion_pytorch_model.safetensors")
    te, tcfg = read(folder, "text_encoder", "model.safetensors")
    sd = {}
    sd.update(unet_to_ldm(unet, ucfg))
    sd.update(vae_to_ldm(vae, vcfg))
    sd.update(open_clip_to_ldm(te, tcfg) if open_clip else clip_to_ldm(te))
    return {k: v.contiguous() for k, v in sd.items()}, {"unet": unet, "vae": vae, "text_encoder": te}


def check_with_diffusers(path, folder, originals):
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_single_file(path, config=folder, local_files_only=True,
                                                    safety_checker=None, requires_safety_checker=False)
    for comp, orig in originals.items():
        got = getattr(pipe, comp).state_dict()
        got = {k: v for k, v in got.items() if not k.endswith("position_ids")}
        if comp == "text_encoder":
            got, orig = with_text_model(got), with_text_model(orig)
        missing = sorted(set(orig) - set(got))
        assert not missing, (comp, missing[:5])
        bad = [k for k in orig if not torch.equal(orig[k], got[k].to(orig[k].dtype).reshape(orig[k].shape))]
        assert not bad, (path, comp, bad[:5])
        print(f"  {comp}: {len(orig)} tensors identical after diffusers' from_single_file")


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, ".cache")
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, ".cache", "single-file")
    os.makedirs(out, exist_ok=True)
    for name, open_clip, ext in (("tiny-sd", False, "safetensors"), ("tiny-sd2", True, "ckpt")):
        folder = os.path.join(src, name)
        sd, originals = convert(folder, open_clip)
        path = os.path.join(out, f"{name}.{ext}")
        if ext == "safetensors":
            save_file(sd, path)
        else:
            torch.save({"state_dict": sd}, path)
        print(path, len(sd), "tensors")
        check_with_diffusers(path, folder, originals)


if __name__ == "__main__":
    main()
