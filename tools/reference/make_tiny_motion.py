#!/usr/bin/env python3
"""Tiny random AnimateDiff motion adapters that fit tests/fixtures/sd/tiny-sd's UNet (diffusers 0.42.1).

ADAPTERS (tests/fixtures/sd/motion/<name>/: config.json + diffusion_pytorch_model.safetensors, diffusers layout)
  tiny-v2   MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=2, motion_norm_num_groups=32,
            motion_num_attention_heads=8, motion_max_seq_length=32, use_motion_mid_block=True)
            = the shape of guoyww/animatediff-motion-adapter-v1-5-2 (mm_sd_v15_v2.ckpt), channels of tiny-sd.
  tiny-v1   the same with use_motion_mid_block=False and motion_max_seq_length=24
            = the shape of animatediff-motion-adapter-v1-5 (mm_sd_v15.ckpt: no mid block, 24 positions;
            diffusers' single-file loader tells v1 from v3 by pos_encoder.pe.shape[1] == 24).
  8 heads as every released SD-1.5 adapter (the original layout stores no head count: a loader must assume 8).
  Each motion module (AnimateDiffTransformer3D) at C channels: norm GroupNorm(32, C), proj_in Linear(C, C),
  one BasicTransformerBlock (norm1, attn1, norm2, attn2 = a 2nd temporal SELF-attention, norm3, ff = GEGLU
  Linear(C, 8C) -> chunk -> Linear(4C, C)), proj_out Linear(C, C); pos_embed.pe [1, max_seq_length, C] buffer.
  Modules: down_blocks.{0,1}.motion_modules.{0,1} (C = 32, 64), mid_block.motion_modules.0 (C = 64, v2 only),
  up_blocks.0.motion_modules.{0,1,2} (C = 64), up_blocks.1.motion_modules.{0,1,2} (C = 32).
  Weights: torch.manual_seed(0 | 1) before each constructor (default init), then every PARAMETER perturbed
  with a seeded generator (seed 200 | 201): proj_out weight/bias := 0.1*N(0,1) (the original AnimateDiff
  zero-initialises proj_out; left at zero a motion module is the identity); LayerNorm/GroupNorm weight := 1 +
  0.1*N(0,1), bias := 0.1*N(0,1) (defaults 1 and 0 are the identity affine); every other weight/bias += 0.1 *
  std(tensor) * N(0,1). Stored in float16, EXCEPT the pos_embed.pe buffers which stay float32 (exact sinusoids:
  diffusers loads pe from the file, it is a persistent buffer; in float16 it would be rounded by ~2e-4).
  The goldens (golden_animatediff.py) are computed from these files read back as float32.

ORIGINAL LAYOUT (mm_sd_v15_v2.ckpt keys; the inverse of diffusers'
scripts/convert_animatediff_motion_module_to_diffusers.py = loaders/single_file_utils.py
convert_animatediff_checkpoint_to_diffusers):
  tiny-v2.safetensors   flat state dict, no prefix
  tiny-v2.ckpt          torch.save({"state_dict": sd}) (zip pickle, tensors float16 / pe float32)
  diffusers key                                    original key
  <blk>.motion_modules.<j>.norm                    <blk>.motion_modules.<j>.temporal_transformer.norm
  <blk>.motion_modules.<j>.proj_in / proj_out      <blk>.motion_modules.<j>.temporal_transformer.proj_in / proj_out
  ... .transformer_blocks.<k>.norm1 / norm2        ... .temporal_transformer.transformer_blocks.<k>.norms.0 / norms.1
  ... .transformer_blocks.<k>.attn1 / attn2        ... .temporal_transformer.transformer_blocks.<k>.attention_blocks.0 / .1
      (.to_q .to_k .to_v .to_out.0 unchanged)
  ... .transformer_blocks.<k>.norm3                ... .temporal_transformer.transformer_blocks.<k>.ff_norm
  ... .transformer_blocks.<k>.ff.net.0.proj, ff.net.2   unchanged below temporal_transformer
  ... .transformer_blocks.<k>.pos_embed.pe         ... .attention_blocks.0.pos_encoder.pe AND .attention_blocks.1.pos_encoder.pe
                                                   (one shared buffer in diffusers, one per attention in the original;
                                                   the converter DROPS every pos_encoder key and recomputes pe)
  <blk> = down_blocks.<i> | mid_block | up_blocks.<i> (same indices in both layouts).
  Check: both files converted back with that logic (the installed diffusers function and a copy of the script's
  function) give exactly the folder's state dict minus the pe buffers, and the stored pe equal the folder's;
  diffusers' infer_diffusers_model_type says "animatediff_v2" and MotionAdapter.from_single_file(file,
  config=<folder>) loads both files to exactly the folder's state dict (pe recomputed == stored).

Usage: python make_tiny_motion.py   (writes tests/fixtures/sd/motion/)
"""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # from_single_file(config=<local folder>) must not look at the hub
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel  # noqa: E402
from diffusers.loaders.single_file_utils import (  # noqa: E402
    convert_animatediff_checkpoint_to_diffusers, infer_diffusers_model_type)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
BASE = os.path.join(REPO, "tests", "fixtures", "sd", "tiny-sd")
OUT = os.path.join(REPO, "tests", "fixtures", "sd", "motion")

torch.set_num_threads(2)

ADAPTERS = {  # name: (constructor seed, perturbation seed, kwargs)
    "tiny-v2": (0, 200, dict(use_motion_mid_block=True, motion_max_seq_length=32)),
    "tiny-v1": (1, 201, dict(use_motion_mid_block=False, motion_max_seq_length=24)),
}
COMMON = dict(block_out_channels=(32, 64), motion_layers_per_block=2, motion_norm_num_groups=32,
              motion_num_attention_heads=8)


def is_norm(name):
    parts = name.split(".")
    return parts[-2] in ("norm", "norm1", "norm2", "norm3")


@torch.no_grad()
def make_adapter(seed, pseed, kw):
    torch.manual_seed(seed)
    a = MotionAdapter(**COMMON, **kw)
    g = torch.Generator().manual_seed(pseed)
    for name, p in a.named_parameters():
        n = torch.randn(p.shape, generator=g)
        if ".proj_out." in name:
            p.copy_(0.1 * n)
        elif is_norm(name):
            p.copy_((1.0 if name.endswith(".weight") else 0.0) + 0.1 * n)
        else:
            p.add_(0.1 * p.std() * n)
    return a.eval()


def to_original(sd):
    """diffusers MotionAdapter state dict -> original AnimateDiff (mm_sd_v15_v2.ckpt) keys."""
    out = {}
    for k, v in sd.items():
        blk, rest = k.split(".motion_modules.", 1)
        j, rest = rest.split(".", 1)
        pre = f"{blk}.motion_modules.{j}.temporal_transformer."
        if rest.startswith("transformer_blocks."):
            _, kk, tail = rest.split(".", 2)
            tb = f"{pre}transformer_blocks.{kk}."
            if tail == "pos_embed.pe":
                for a in (0, 1):
                    out[f"{tb}attention_blocks.{a}.pos_encoder.pe"] = v.float().clone()
                continue
            head, tail2 = tail.split(".", 1)
            head = {"norm1": "norms.0", "norm2": "norms.1", "norm3": "ff_norm",
                    "attn1": "attention_blocks.0", "attn2": "attention_blocks.1"}.get(head, head)
            out[f"{tb}{head}.{tail2}"] = v.half().contiguous()
        else:
            out[pre + rest] = v.half().contiguous()
    return out


def script_convert(original_state_dict):
    """scripts/convert_animatediff_motion_module_to_diffusers.py: convert_motion_module (diffusers main)."""
    converted = {}
    for k, v in original_state_dict.items():
        if "pos_encoder" in k:
            continue
        converted[k.replace(".norms.0", ".norm1").replace(".norms.1", ".norm2").replace(".ff_norm", ".norm3")
                  .replace(".attention_blocks.0", ".attn1").replace(".attention_blocks.1", ".attn2")
                  .replace(".temporal_transformer", "")] = v
    return converted


def save_folder(a, d):
    """float16 on disk except the pe buffers (float32, exact)."""
    a.save_pretrained(d, safe_serialization=True)
    path = os.path.join(d, "diffusion_pytorch_model.safetensors")
    sd = {k: (v.float() if k.endswith(".pe") else v.half()).contiguous() for k, v in a.state_dict().items()}
    save_file(sd, path, metadata={"format": "pt"})
    return path


@torch.no_grad()
def main():
    os.makedirs(OUT, exist_ok=True)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(BASE, "unet")).eval()
    report = {}
    for name, (seed, pseed, kw) in ADAPTERS.items():
        a = make_adapter(seed, pseed, kw)
        d = os.path.join(OUT, name)
        save_folder(a, d)
        back = MotionAdapter.from_pretrained(d, torch_dtype=torch.float32).eval()
        sd = back.state_dict()
        # the stored values: f16-rounded parameters, exact float32 pe
        for k, v in a.state_dict().items():
            ref = v if k.endswith(".pe") else v.half().float()
            assert torch.equal(sd[k], ref), k
        m = UNetMotionModel.from_unet2d(unet, back)  # must fit tiny-sd's UNet
        n_params = sum(p.numel() for p in back.parameters())
        report[name] = {"config": {k: v for k, v in back.config.items() if not k.startswith("_")},
                        "parameters": n_params, "tensors": len(sd),
                        "motion_unet_parameters": sum(p.numel() for p in m.parameters())}
        if name != "tiny-v2":
            continue
        orig = to_original(sd)
        st_path = os.path.join(OUT, f"{name}.safetensors")
        ck_path = os.path.join(OUT, f"{name}.ckpt")
        save_file(orig, st_path)
        torch.save({"state_dict": orig}, ck_path)
        pe_keys = {k for k in sd if k.endswith(".pe")}
        for path in (st_path, ck_path):
            loaded = load_file(path) if path.endswith(".safetensors") else \
                torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
            assert set(loaded) == set(orig)
            for conv in (script_convert, convert_animatediff_checkpoint_to_diffusers):
                c = conv(loaded)
                assert set(c) == set(sd) - pe_keys, sorted(set(c) ^ (set(sd) - pe_keys))[:8]
                for k, v in c.items():
                    assert v.dtype == torch.float16 and torch.equal(v.float(), sd[k]), k
                # what the script does next: MotionAdapter(...).load_state_dict(strict=False), pe recomputed
                re = MotionAdapter(**COMMON, **kw)
                res = re.load_state_dict({k: v.float() for k, v in c.items()}, strict=False)
                assert sorted(res.missing_keys) == sorted(pe_keys) and not res.unexpected_keys, res
                for k, v in re.state_dict().items():
                    assert torch.equal(v, sd[k]), k
            for k, v in loaded.items():
                if k.endswith(".pe"):
                    dk = k.replace(".temporal_transformer", "").split(".attention_blocks.")[0] + ".pos_embed.pe"
                    assert v.dtype == torch.float32 and torch.equal(v, sd[dk]), k
            # diffusers' own single-file path (model type detection + converter), offline with the local config
            assert infer_diffusers_model_type(loaded) == "animatediff_v2"
            sf = MotionAdapter.from_single_file(path, config=d, torch_dtype=torch.float32).state_dict()
            assert set(sf) == set(sd) and all(torch.equal(sf[k], sd[k]) for k in sd), path
        report[name]["original_layout"] = {"keys": len(orig), "pe_keys": sum(k.endswith(".pe") for k in orig),
                                           "converts_back_exactly": True}
        print(f"{name}: original layout converts back exactly ({len(orig)} keys, {len(pe_keys)} diffusers pe buffers)")
    sizes = {os.path.relpath(os.path.join(r, f), OUT): os.path.getsize(os.path.join(r, f))
             for r, _, fs in os.walk(OUT) for f in fs}
    print(json.dumps(report, indent=1, default=str))
    print(json.dumps(sizes, indent=1), "total", sum(sizes.values()))


if __name__ == "__main__":
    main()
