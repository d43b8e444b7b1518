#!/usr/bin/env python3
"""A real-sized Stable Diffusion pipeline with random weights, made where no hub and no
diffusers are: the GPU machine has PyTorch only, and a 3.5 GB model cannot travel there.

  random_model.py shapes SRC_DIR OUT_DIR   (here, once) the configs of a diffusers folder and
                                           the name and shape of every weight (shapes.json);
                                           SRC_DIR from tools/reference/make_sd2_random.py
  random_model.py build SHAPES_DIR OUT_DIR [--dtype f16|f32]
                                           (there) a diffusers folder with those weights,
                                           drawn as PyTorch initialises such layers; the
                                           tokenizer is tests/fixtures/sd/tiny-sd2's

Time and memory do not depend on the values; activations stay in range with this init, so a
half-precision run does not stop on overflow that real weights would not have.
"""
import ctypes
import json
import math
import os
import shutil
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
# The components a stylize run loads, and their weight files (diffusers layout).
WEIGHTS = {
    "unet": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "text_encoder": "model.safetensors",
}
CONFIGS = ["unet/config.json", "vae/config.json", "text_encoder/config.json",
           "scheduler/scheduler_config.json"]


def header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h


def copy_configs(src, out):
    for c in CONFIGS:
        os.makedirs(os.path.join(out, os.path.dirname(c)), exist_ok=True)
        shutil.copy(os.path.join(src, c), os.path.join(out, c))


def shapes(src, out):
    os.makedirs(out, exist_ok=True)
    table = {c: {name: t["shape"] for name, t in sorted(header(os.path.join(src, c, f)).items())}
             for c, f in WEIGHTS.items()}
    with open(os.path.join(out, "shapes.json"), "w") as f:
        json.dump(table, f, separators=(",", ":"))
    copy_configs(src, out)
    print("wrote", out, {c: len(t) for c, t in table.items()})


def draw(torch, name, shape, gen):
    """PyTorch's default init of the layer the weight belongs to."""
    leaf = name.rsplit(".", 1)[-1]
    if len(shape) == 1 and ("norm" in name or "ln_" in name or "layer_norm" in name):
        return torch.ones(shape) if leaf == "weight" else torch.zeros(shape)
    if "embedding" in name and leaf == "weight":
        return torch.randn(shape, generator=gen)
    # Linear and conv (kaiming uniform with a = sqrt(5)) and their biases: U(±1/sqrt(fan_in)).
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return torch.empty(shape).uniform_(-bound, bound, generator=gen)


def write_safetensors(torch, path, tensors, dtype):
    names = sorted(tensors)
    meta, offset = {}, 0
    for n in names:
        size = tensors[n].numel() * tensors[n].element_size()
        meta[n] = {"dtype": dtype, "shape": list(tensors[n].shape),
                   "data_offsets": [offset, offset + size]}
        offset += size
    head = json.dumps(meta, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for n in names:
            # The tensor's memory in one copy (numpy may not be there; bytes(storage) goes
            # byte by byte).
            t = tensors[n].contiguous()
            lo, hi = meta[n]["data_offsets"]
            f.write(ctypes.string_at(t.data_ptr(), hi - lo))


def build(src, out, dtype):
    import torch
    tdtype, sdtype = {"f16": (torch.float16, "F16"), "f32": (torch.float32, "F32")}[dtype]
    with open(os.path.join(src, "shapes.json")) as f:
        table = json.load(f)
    gen = torch.Generator().manual_seed(0)
    copy_configs(src, out)
    shutil.copytree(os.path.join(ROOT, "tests/fixtures/sd/tiny-sd2/tokenizer"),
                    os.path.join(out, "tokenizer"), dirs_exist_ok=True)
    for c, file in WEIGHTS.items():
        tensors = {n: draw(torch, n, s, gen).to(tdtype) for n, s in table[c].items()}
        write_safetensors(torch, os.path.join(out, c, file), tensors, sdtype)
        print(c, sum(t.numel() for t in tensors.values()) / 1e6, "M parameters")
    print("wrote", out)


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "shapes":
        shapes(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 4 and sys.argv[1] == "build":
        dt = sys.argv[sys.argv.index("--dtype") + 1] if "--dtype" in sys.argv else "f16"
        build(sys.argv[2], sys.argv[3], dt)
    else:
        sys.exit(__doc__)
