#!/usr/bin/env python3
"""Golden for the flow-warped noise (crates/stylizer/src/temporal/noise_warp.rs): Go-with-the-Flow's
training-free warper, `NoiseWarper` / `warp_xyωc` (defaults: xy_mode="none", no extra noise) of
RyannDaGreat/CommonSource `noise_warp.py`, run on fixed draws and flows.

The reference is other people's code and is not committed: clone it into the reference cache,
  git clone https://github.com/RyannDaGreat/CommonSource .cache/CommonSource
  git -C .cache/CommonSource checkout 28f1b68cf38421f14c5a0528d6785f98338416cc
and install the `rp` package it imports (its torch_remap_image / torch_scatter_add_image /
torch_resize_image do the sampling) with what `import rp` needs:
  .cache/venv/bin/pip install --no-deps rp==0.1.1428 einops==0.8.2 cachetools six
`noise_warp.py` also imports RAFT, a background remover and `fire` at module level, for its
video demos; they are stubbed here (nothing below calls them).

CASE: c = 4 channels, 40×32 grid (h = 32), 5 steps along smooth sub-pixel flows (a zoom about an
off-centre point, a turn and a sine wobble, different at every step; parts of the grid leave it).
torch.manual_seed(0) for the start noise; every `torch.randn_like` inside `regaussianize` is drawn
from a generator seeded 1 and recorded, so the Rust side replays the same draws.

KEYS: start [c,h,w]; flow{k} [2,h,w] (dx, dy) for k in 0..5; fresh{k} [c,h,2w] (the draws of
step k's regaussianize); noise{k} [c,h,w], weight{k} [h,w] (the state after step k);
down{k} [c,h/4,w/4]: get_noise_from_video's downscale_noise (area resize ÷4, ×4) of noise{k}.
Writes tests/fixtures/noise_warp.safetensors (~130 KB).
"""
import os
import sys
import types

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
SOURCE = os.environ.get("COMMONSOURCE", os.path.join(HERE, ".cache", "CommonSource"))

for stub in ("raft", "background_remover", "fire"):
    module = types.ModuleType(stub)
    module.RaftOpticalFlow = module.BackgroundRemover = None
    sys.modules[stub] = module
sys.path.insert(0, SOURCE)
import rp  # noqa: E402
import noise_warp as nw  # noqa: E402

torch.set_num_threads(2)
C, H, W, STEPS = 4, 32, 40, 5


def flow(k):
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    cx, cy = 17.3 + k, 13.7 - 0.5 * k
    zoom, turn = 0.06 + 0.02 * k, 0.04 * (k - 2)
    dx = zoom * (x - cx) - turn * (y - cy) + 0.8 * torch.sin(0.3 * y + k)
    dy = turn * (x - cx) + zoom * (y - cy) + 0.6 * torch.cos(0.25 * x - k)
    return torch.stack([dx, dy])


def main():
    torch.manual_seed(0)
    warper = nw.NoiseWarper(C, H, W, device="cpu")
    out = {"start": warper._state[3:].clone()}
    draws = torch.Generator().manual_seed(1)
    recorded = []
    plain_randn_like = torch.randn_like

    def randn_like(t, **kwargs):
        d = torch.randn(t.shape, generator=draws, dtype=t.dtype)
        recorded.append(d.clone())
        return d

    torch.randn_like = randn_like
    try:
        for k in range(STEPS):
            f = flow(k)
            recorded.clear()
            warper(f[0], f[1])
            assert len(recorded) == 1, len(recorded)
            out[f"flow{k}"] = f
            out[f"fresh{k}"] = recorded[0]
            out[f"noise{k}"] = warper._state[3:].clone()
            out[f"weight{k}"] = warper._state[2].clone()
            out[f"down{k}"] = rp.torch_resize_image(warper._state[3:], 1 / 4, interp="area") * 4
    finally:
        torch.randn_like = plain_randn_like
    path = os.path.join(REPO, "tests", "fixtures", "noise_warp.safetensors")
    save_file({k: v.contiguous().float() for k, v in out.items()}, path)
    print("wrote", path, {k: tuple(v.shape) for k, v in list(out.items())[:6]})


if __name__ == "__main__":
    main()
