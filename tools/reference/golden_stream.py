#!/usr/bin/env python3
"""Golden for StreamV2V's cached self-attention (feature bank + ToMe + feature injection) on the tiny SD fixtures.

For V in {tiny-sd, tiny-sd2} writes <OUT>/V/stream.safetensors and <OUT>/V/stream.json (OUT defaults to
tests/fixtures/sd/golden; models are read from tests/fixtures/sd/V, diffusers layout; float32, CPU, 2 threads
via golden_sd).

REFERENCE: Jeff-LiangF/streamv2v at the pinned commit STREAMV2V_COMMIT below:
src/streamv2v/models/attention_processor.py (class CachedSTXFormersAttnProcessor) and
src/streamv2v/models/utils.py (get_nn_feats, random_bipartite_soft_matching). They are NOT committed: the script
copies them into .cache/streamv2v/streamv2v_models/ (+ an empty __init__.py, so the file's `from .utils import`
works) from (first that works) env STREAMV2V_DIR (a checkout: $STREAMV2V_DIR/src/streamv2v/models/*.py), the local
git mirror (`git -C $STREAMV2V_MIRROR show COMMIT:path`, default /work/.mirror/Jeff-LiangF+streamv2v/repo), or
raw.githubusercontent.com at COMMIT, and imports `streamv2v_models.attention_processor` unchanged (the JSON has both
files' sha256 and where they came from).
SHIMS (around the files, never in them):
  * xformers: the file imports it only if available (there is no CPU kernel), else sets the module global
    `xformers = None`. We set `attention_processor.xformers` to a namespace whose
    ops.memory_efficient_attention(q, k, v, attn_bias=None, op=None, scale=None) is plain attention on the 3-D
    [B*heads, N, d] tensors the processor passes: softmax((q @ k^T) * scale, dim=-1) @ v (asserts attn_bias is None,
    op is None; the processor passes scale = attn.scale = head_dim^-0.5).
  * nothing else: diffusers 0.42.1 still has diffusers.models.lora.LoRACompatibleLinear / LoRALinearLayer and
    diffusers.utils.USE_PEFT_BACKEND (True here: peft is installed), so `args = () if USE_PEFT_BACKEND else (scale,)`
    is () and to_q/to_k/to_v/to_out get no extra argument (asserted); einops (utils.py's import; only the unused
    get_nn_latent needs it) is in the venv.
  * instrumentation only (results unchanged): the module globals `random_bipartite_soft_matching` and `get_nn_feats`
    of attention_processor are wrapped (recording, see MERGE DRAWS / INJECTION below; the originals do the work), and
    forward hooks on the UNet and on every self-attention module record the UNet call / layer index and the bank
    updates.

RUN (one case): StreamV2V's per-frame order (the reference's use_denoising_batch=False: frames one after another,
the processors keep their state across frames). StableDiffusionImg2ImgPipeline, prompt golden_sd prompt0, negative
"", DDIM from the model's scheduler config, strength 0.6, 10 steps (6 run: t = 501,401,301,201,101,1), eta 0,
output_type "pt"; ONE pipeline call PER FRAME, frames 0,1,2 in order, the SAME processor objects for all three
calls, one torch.Generator seeded SEED=42 at the start of the case and passed to every call (so each frame draws its
own, different noises; all cases draw identical ones, asserted) and torch.manual_seed(SEED) for the global
generator that the merges' torch.rand uses. UNet processors, exactly as utils/wrapper.py
installs them: pipe.unet.set_attn_processor({name: CachedSTXFormersAttnProcessor(name=name, <options>)} for every
name in pipe.unet.attn_processors) - cross-attention (attn2) processors too, they hold no state; the VAE keeps its
own processors.
FRAMES: F = 3 consecutive frames (n = 100, 101, 102) of tests/data/bikes.mp4 via golden_sd.clip_frames (ffmpeg ->
PNG, RGB, PIL bicubic to golden_sd's variant size: tiny-sd 64x48, tiny-sd2 112x96, = golden_crossframe.py's frames),
preprocessed RGB/255*2-1 NCHW (= pipe.image_processor.preprocess, checked).

CASES (fresh processors and a fresh generator for each):
  tome             guidance 7.5 (CFG: UNet batch rows [uncond, cond]); the StreamV2VWrapper defaults
                   use_feature_injection=True, feature_injection_strength=0.8, feature_similarity_threshold=0.98,
                   interval=4, max_frames=1, use_tome_cache=True, tome_metric="keys", tome_ratio=0.5, use_grid=False
  tome_noguidance  as tome, guidance 1.0 (no CFG: UNet batch 1)
  fifo2            as tome with use_tome_cache=False, max_frames=2 (FIFO bank of the last 2 updates, no merging)
  independent      diffusers' plain AttnProcessor on the UNet (no bank) - the baseline
  tome_t090        (only written if some case never injects) as tome with feature_similarity_threshold=0.9

WHAT THE REFERENCE COMPUTES (attention_processor.py lines 239-351, per self-attention layer; `g` = the processor's
frame_id, incremented on EVERY call, i.e. the global UNet call counter g = 6*f + s for frame f, step s):
  K, V, Q = to_k/to_v/to_q(x) [B,N,C]; K_att = cat_tokens([K] + list(bank_K)) (own tokens FIRST, then the bank
  entries oldest first; line 296), same for V; out = to_out(attention(Q, K_att, V_att)) (the shim; heads as
  head_to_batch_dim). If use_feature_injection and the layer name contains "up_blocks.0", "up_blocks.1" or
  "mid_block" and the bank is non-empty (lines 336-339): out = out*(1-0.8) + 0.8*get_nn_feats(out, bank_out, 0.98)
  ((1-0.8) is the Python float 0.19999999999999996, i.e. 0.2f once torch casts it), where get_nn_feats
  (utils.py 8-27) takes y = cat_tokens(bank_out), cosine = normalize(out) @ normalize(y)^T per batch row, and
  replaces each token whose max cosine >= threshold by y[argmax] (torch.max: first index on exact ties on CPU),
  else keeps it (the mask is `max < threshold` -> keep). The bank's K/V are to_k/to_v outputs [B,N,C] (all heads,
  before head_to_batch_dim); `out` is after to_out (no residual here), [B,N,C].
  Bank update (lines 341-348) when g % 4 == 0 (g = 0, 4, 8, 12, 16 -> (f,s) = (0,0),(0,4),(1,2),(2,0),(2,4)), with
  the layer's own K, V and its PRE-injection output: tome: bank empty -> append; else (lines 203-216)
  cat_tokens([bank, new]) (bank FIRST here, unlike the attention) -> random_bipartite_soft_matching(metric = the
  concatenated KEYS (eval("keys")), ratio 0.5) -> merged K, V, out replace the single entry (deque maxlen 1).
  fifo2: append to a deque of maxlen 2 (oldest dropped).
  random_bipartite_soft_matching (utils.py 57-127) on [B, M=2N, C]: perm = torch.rand(B, M, 1).argsort(dim=1);
  r = int(0.5*M); src = perm[:, :r], dst = perm[:, r:] (gather order); metric normalised per token (x/||x||),
  scores = src @ dst^T, dst_idx = argmax over dst (first on ties); each of K, V, out:
  dst.scatter_reduce(-2, dst_idx, src, reduce="mean") with include_self=True (torch's default): a dst token's new
  value = (itself + every src token assigned to it) / (1 + count); result [B, M-r, C] in dst (= perm[:, r:]) order.
  So frame 0's steps 1-3 already attend to [own, frame 0 step 0's K/V] and inject from frame 0 step 0's outputs;
  frame 0 thus differs from `independent` too. The bank used by a call is the one before that call's own update.
  fifo2: attention keys [own, older entry, newer entry], get_nn_feats y = [older, newer] outputs (2N tokens).

MERGE DRAWS: every torch.rand inside random_bipartite_soft_matching is recorded as the permutation
perm = rand.argsort(dim=1)[..., 0] (stored int16 [B, M]) under <case>.merge.f{f}.s{s}.l{l} (f frame, s UNet call index in
that frame = step among the 6, l = self-attention layer index in the order the UNet calls its attn1 processors:
down blocks, mid block, up blocks; see the JSON's self_attention_layers). torch.rand is patched only during that
call: it draws the real torch.rand, takes its argsort, and hands the function values whose argsort is exactly that
permutation (perm[b, i] gets value i), so ties cannot matter; a replay (the float64 run) hands out the stored
permutation the same way. Asserted: exactly one draw per self-attention layer at each update where the bank
already holds an entry (tome: 4 update calls x L layers), none in fifo2.
INJECTION: attention_processor.get_nn_feats is wrapped; per frame it counts the tokens (over batch rows, injection
layers and steps) whose max cosine >= threshold (the tokens it replaces) -> <case>.injected int64 [F].

KEYS (F = 3, h,w = latent size, H,W = image size; float32 unless said):
  image_in [F,3,H,W] in [-1,1]; prompt_input_ids / negative_input_ids [1,77] int64;
  prompt_embeds [2,77,D] = [negative "", prompt0]; timesteps [10] int64 (full schedule; the last 6 run);
  noise_vae [F,4,h,w] (frame f's posterior sample: z = mean + exp(0.5*clamp(logvar,-30,20)) * noise_vae[f], x0 = sf*z)
  noise_add [F,4,h,w] (scheduler.add_noise(x0, noise_add[f], 501)); DDIM eta 0 draws nothing else;
  per case C: C.final_latents [F,4,h,w] (latents after the last step, before decoding), C.image_out [F,3,H,W] =
  clamp(vae.decode(lat/sf)/2+0.5, 0, 1); C.injected [F] int64 (not for independent);
  C.merge.f{f}.s{s}.l{l} [B, 2N] int16 (tome cases only);
  C.into.f{f}.s{s}.l{l} [B, r] int16: each merged token's destination (index among the kept ones, the reference's
  scores.max(dim=-1)[1]); C.nearest.f{f}.s{s}.l{l} [B, N] int16: per output token of an injecting layer, the
  index of its best cosine match in the bank's outputs, or -1 where that match is below the threshold (kept).
  These two are the reference's own discrete choices: the tiny random models make many near ties (top-2 within
  1e-5), which float rounding decides either way, so the Rust replay follows them where its own choice is within
  a near tie of the reference's and fails where it is not.
The JSON holds the parameters, prompt, frame source, pinned commit, file sources and sha256, the self-attention
layers in call order (name, tokens, heads, injects), per case the update events (frame, step, merged/appended),
injected counts per frame (and per layer), the smallest margins (|max cosine - threshold| over all tokens, top-1 vs
top-2 merge score gap), the "fragile decisions" (replaced tokens whose two best neighbours are within 1e-5 in cosine,
tokens within 1e-5 of the threshold, merge sources whose two best destinations are within 1e-5, with the feature
change a flip would cause), per-frame max|delta| of each case vs independent (and tome_noguidance vs an unsaved
guidance-1.0 independent run), a float64 re-run of `tome` (pipeline .to(float64), noises and merge permutations
replayed; decisions that flipped are counted), and a SENSITIVITY check: every stateful case re-run in float32 with
the shim computing the same attention through torch's SDPA kernel (another summation order, as a port's would be),
noises and permutations replayed - per-frame max|delta| and flipped decisions. That figure, not the float64 one,
shows what a correct float32 port can expect: tiny-sd's random model gives near-collinear self-attention outputs
(max cosine ~0.9997, nearly every token is injected, its best two bank neighbours often tie within 1e-6), so a
flip there moves later frames by up to ~1e-2 (see the JSON).

Usage: python golden_stream.py   (env: GOLDEN_MODELS=dir with tiny-sd/, tiny-sd2/; GOLDEN_OUT=out dir;
STREAMV2V_DIR=checkout, STREAMV2V_MIRROR=git dir; STREAM_CLIP, STREAM_START, STREAM_FRAMES;
GOLDEN_PROMPTS/GOLDEN_SIZES/GOLDEN_PARAMS as golden_sd.py)
"""
import hashlib
import importlib
import json
import os
import re
import sys
import types
from collections import deque

import numpy as np
import torch
import torch.nn.functional as Fn
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
CACHE = os.path.join(HERE, ".cache")
sys.path.insert(0, HERE)
# golden_sd: sets 2 threads, imports diffusers, wraps randn_tensor; we reuse its helpers and parameters
import golden_sd as G  # noqa: E402
from golden_sd import save_file, stats, tokenize  # noqa: E402

import diffusers  # noqa: E402
from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline  # noqa: E402
from diffusers.models.attention_processor import Attention, AttnProcessor  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

STREAMV2V_COMMIT = "3e571d88456f85b97f68f321c74327c338a9c194"  # Jeff-LiangF/streamv2v, 2025-02-11
REF_FILES = {"attention_processor.py": "src/streamv2v/models/attention_processor.py",
             "utils.py": "src/streamv2v/models/utils.py"}
MIRROR = os.environ.get("STREAMV2V_MIRROR", "/work/.mirror/Jeff-LiangF+streamv2v/repo")
MODELS = os.environ.get("GOLDEN_MODELS", os.path.join(REPO, "tests", "fixtures", "sd"))
OUT = os.environ.get("GOLDEN_OUT", os.path.join(REPO, "tests", "fixtures", "sd", "golden"))
CLIP = os.environ.get("STREAM_CLIP", os.path.join(REPO, "tests", "data", "bikes.mp4"))
START = int(os.environ.get("STREAM_START", "100"))
NF = int(os.environ.get("STREAM_FRAMES", "3"))
PROMPT = G.PROMPTS[0]
NEG = ""

# StreamV2VWrapper's defaults (utils/wrapper.py: use_feature_injection=True, feature_injection_strength=0.8,
# feature_similarity_threshold=0.98, cache_interval=4, cache_maxframes=1, use_tome_cache=True, tome_metric="keys",
# tome_ratio=0.5, use_grid=False)
WRAPPER_DEFAULTS = dict(use_feature_injection=True, feature_injection_strength=0.8, feature_similarity_threshold=0.98,
                        interval=4, max_frames=1, use_tome_cache=True, tome_metric="keys", tome_ratio=0.5,
                        use_grid=False)
CASES = {
    "tome": (G.GUIDANCE, dict(WRAPPER_DEFAULTS)),
    "tome_noguidance": (1.0, dict(WRAPPER_DEFAULTS)),
    "fifo2": (G.GUIDANCE, dict(WRAPPER_DEFAULTS, use_tome_cache=False, max_frames=2)),
    "independent": (G.GUIDANCE, None),
}
EXTRA_CASE = ("tome_t090", (G.GUIDANCE, dict(WRAPPER_DEFAULTS, feature_similarity_threshold=0.9)))
INJECT_MARKERS = ("up_blocks.0", "up_blocks.1", "mid_block")  # attention_processor.py line 336
TIE_EPS = 1e-5  # a decision (argmax, threshold) closer than this is reported as fragile


# ---------------------------------------------------------------- the reference files
def obtain_reference():
    """Copy the two files at the pinned commit into .cache/streamv2v/streamv2v_models/; returns (dir, info)."""
    pkg = os.path.join(CACHE, "streamv2v", "streamv2v_models")
    os.makedirs(pkg, exist_ok=True)
    with open(os.path.join(pkg, "__init__.py"), "w"):
        pass
    info = {}
    local = os.environ.get("STREAMV2V_DIR")
    for fname, rel in REF_FILES.items():
        dst = os.path.join(pkg, fname)
        text, source = G.pinned_source("Jeff-LiangF/streamv2v", STREAMV2V_COMMIT, rel, MIRROR,
                                       local and os.path.join(local, rel))
        with open(dst, "wb") as fh:
            fh.write(text)
        info[rel] = {"sha256": hashlib.sha256(text).hexdigest(), "source": source,
                     "copied_to": os.path.relpath(dst, REPO)}
    return os.path.dirname(pkg), info


SHIM_IMPL = ["plain"]  # "sdpa": an unsaved check run computes the same attention with torch's SDPA kernel


def _plain_memory_efficient_attention(query, key, value, attn_bias=None, op=None, scale=None):
    """CPU stand-in for xformers.ops.memory_efficient_attention on 3-D [B*heads, N, d] tensors."""
    assert attn_bias is None and op is None and scale is not None
    assert query.ndim == 3 and key.ndim == 3 and value.ndim == 3
    if SHIM_IMPL[0] == "sdpa":
        return Fn.scaled_dot_product_attention(query[None], key[None], value[None], scale=scale)[0]
    return torch.softmax((query @ key.transpose(-1, -2)) * scale, dim=-1) @ value


def import_reference():
    root, info = obtain_reference()
    sys.path.insert(0, root)
    for m in [m for m in sys.modules if m == "streamv2v_models" or m.startswith("streamv2v_models.")]:
        del sys.modules[m]
    AP = importlib.import_module("streamv2v_models.attention_processor")
    shims = []
    assert AP.xformers is None, "xformers is installed: the shim would not be needed"
    AP.xformers = types.SimpleNamespace(ops=types.SimpleNamespace(
        memory_efficient_attention=_plain_memory_efficient_attention))
    shims.append("attention_processor.xformers := namespace with ops.memory_efficient_attention = "
                 "softmax((q @ k^T) * scale, -1) @ v on [B*heads, N, d] (attn_bias must be None)")
    assert AP.USE_PEFT_BACKEND is True, "USE_PEFT_BACKEND False would pass `scale` to the Linear layers"
    return AP, info, shims


AP, REF_INFO, SHIMS = import_reference()
UT = sys.modules["streamv2v_models.utils"]

# ---------------------------------------------------------------- RNG: record or replay every randn_tensor draw
DRAWS, REPLAY = G.replay_draws()  # (caller file, tensor) of the current pipeline call; tensors to hand out instead


# ---------------------------------------------------------------- instrumentation state
class State:
    active = False
    frame = -1        # frame index of the current pipeline call
    step = -1         # UNet call index within the frame
    layer = -1        # self-attention layer index within the UNet call
    layer_name = None
    order = []        # self-attention layer names in call order (first UNet call)
    merges = {}       # (f,s,l) -> perm int64 [B,M]
    replay_perms = None
    merge_info = {}   # (f,s,l) -> dict
    inj = []          # (f, s, l, n_replaced, n_tokens, min margin, max cosine)
    choices = []      # ("nn"|"merge", (f,s,l), chosen indices, mask of tokens where the choice matters)
    fragile = []      # ("nn_tie"|"threshold"|"merge_tie", (f,s,l), count, max |feature change| if it flipped)
    events = []       # (f, s, l, kind, bank entries after, bank tokens after)
    snap = None


_ORIG_RBSM = AP.random_bipartite_soft_matching
_ORIG_NN = AP.get_nn_feats
assert _ORIG_RBSM is UT.random_bipartite_soft_matching and _ORIG_NN is UT.get_nn_feats


def _rbsm(metric, use_grid=False, ratio=0.5):
    """random_bipartite_soft_matching with its torch.rand recorded (as a permutation) or replayed."""
    assert not use_grid
    key = (State.frame, State.step, State.layer)
    assert key not in State.merges, key
    B, N, _ = metric.shape
    calls = []
    real_rand = torch.rand

    def fake_rand(*size, device=None, **kw):
        assert tuple(size) == (B, N, 1) and not kw, (size, kw)
        if State.replay_perms is not None:
            perm = State.replay_perms[key].clone()
        else:
            perm = real_rand(B, N, 1, device=device).argsort(dim=1)[..., 0]
        calls.append(perm)
        vals = torch.empty(B, N, 1).scatter_(1, perm[..., None], torch.arange(N, dtype=torch.float32)
                                             .expand(B, N)[..., None].contiguous())
        return vals

    torch.rand = fake_rand
    try:
        out = _ORIG_RBSM(metric, use_grid=use_grid, ratio=ratio)
    finally:
        torch.rand = real_rand
    assert len(calls) == 1, len(calls)
    perm = calls[0]
    State.merges[key] = perm.to(torch.int64)
    # margin of the destination choice (top-1 vs top-2 score), recomputed like the reference
    r = int(ratio * N)
    m = metric / metric.norm(dim=-1, keepdim=True)
    a = m.gather(1, perm[:, :r, None].expand(B, r, m.shape[-1]))
    b = m.gather(1, perm[:, r:, None].expand(B, N - r, m.shape[-1]))
    scores = a @ b.transpose(-1, -2)
    top2 = scores.topk(2, dim=-1).values
    dst = scores.max(dim=-1)[1]
    State.choices.append(("merge", key, dst, torch.ones_like(dst, dtype=torch.bool)))
    gap = top2[..., 0] - top2[..., 1]
    State.fragile.append(("merge_tie", key, int((gap < TIE_EPS).sum()), None))
    State.merge_info[key] = {"B": B, "M": N, "r": r, "min_top1_top2_gap": float((top2[..., 0] - top2[..., 1]).min()),
                             "max_srcs_on_one_dst": int(max(torch.bincount(dst[i], minlength=N - r).max()
                                                            for i in range(B)))}
    return out


def _nn_feats(x, y, threshold=0.9):
    out = _ORIG_NN(x, y, threshold=threshold)
    yy = torch.cat(list(y), dim=1) if type(y) is deque else y
    cos = torch.matmul(Fn.normalize(x, p=2, dim=-1), Fn.normalize(yy, p=2, dim=-1).transpose(1, 2))
    mx, idx = torch.max(cos, dim=-1)
    replaced = ~(mx < threshold)
    # sanity: the tokens not replaced are x unchanged
    assert torch.equal(out[~replaced], x[~replaced])
    key = (State.frame, State.step, State.layer)
    State.choices.append(("nn", key, idx, replaced))
    # fragile decisions: two best neighbours within TIE_EPS (replaced tokens), max cosine within TIE_EPS of the
    # threshold; with the feature change a flip would cause
    top2 = cos.topk(2, dim=-1)
    tie = replaced & (top2.values[..., 0] - top2.values[..., 1] < TIE_EPS)
    C = yy.shape[-1]
    pick = lambda i: yy.gather(1, i[..., None].expand(-1, -1, C))  # noqa: E731
    change = (pick(top2.indices[..., 0]) - pick(top2.indices[..., 1])).abs().amax(dim=-1)
    State.fragile.append(("nn_tie", key, int(tie.sum()), float(change[tie].max()) if tie.any() else 0.0))
    near = (mx.double() - threshold).abs() < TIE_EPS
    change = (x - pick(idx)).abs().amax(dim=-1)
    State.fragile.append(("threshold", key, int(near.sum()), float(change[near].max()) if near.any() else 0.0))
    State.inj.append((State.frame, State.step, State.layer, int(replaced.sum()), int(mx.numel()),
                      float((mx.double() - threshold).abs().min()), float(mx.max())))
    return out


AP.random_bipartite_soft_matching = _rbsm
AP.get_nn_feats = _nn_feats


def _bank(proc):
    return None if not hasattr(proc, "cached_key") else list(proc.cached_key)


def instrument(unet):
    """Hooks: UNet call counter, self-attention layer index, bank-update events."""
    def unet_pre(mod, args):
        if State.active:
            State.step += 1
            State.layer = -1

    unet.register_forward_pre_hook(unet_pre)
    for name, m in unet.named_modules():
        if not isinstance(m, Attention) or m.is_cross_attention:
            continue
        assert name.endswith(".attn1"), name

        def pre(mod, args, name=name):
            if not State.active:
                return
            State.layer += 1
            State.layer_name = name
            if State.frame == 0 and State.step == 0:
                State.order.append(name)
            else:
                assert State.order[State.layer] == name, (State.layer, name)
            State.snap = (_bank(mod.processor), len(State.merges))

        def post(mod, args, out, name=name):
            if not State.active:
                return
            before, nm = State.snap
            after = _bank(mod.processor)
            n_new = len(State.merges) - nm
            if after is None:
                assert n_new == 0
                return
            if len(after) != len(before) or any(a is not b for a, b in zip(after, before)):
                kind = "merged" if n_new == 1 else "appended"
                assert n_new in (0, 1), n_new
                toks = sum(t.shape[1] for t in mod.processor.cached_key)
                State.events.append((State.frame, State.step, State.layer, kind, len(after), toks))
            else:
                assert n_new == 0

        m.register_forward_pre_hook(pre)
        m.register_forward_hook(post)


# ---------------------------------------------------------------- runs
def make_procs(unet, opts):
    if opts is None:
        return AttnProcessor()
    procs = {name: AP.CachedSTXFormersAttnProcessor(name=name, **opts) for name in unet.attn_processors}
    return procs


def run_case(pipe, frames, guidance, opts, noise=None, perms=None):
    """Frames one after another, the same processors throughout; returns outputs, draws and records."""
    procs = make_procs(pipe.unet, opts)
    pipe.unet.set_attn_processor(dict(procs) if isinstance(procs, dict) else procs)  # it pops from a dict
    State.merges, State.merge_info, State.inj, State.events = {}, {}, [], []
    State.choices, State.fragile = [], []
    torch.manual_seed(G.SEED)  # torch.rand in random_bipartite_soft_matching uses the global generator
    State.replay_perms = perms
    State.order = []
    gen = torch.Generator().manual_seed(G.SEED)
    lats, imgs, nv, na, steps = [], [], [], [], []
    for f, fr in enumerate(frames):
        State.frame, State.step, State.layer = f, -1, -1
        DRAWS.clear()
        REPLAY[:] = [] if noise is None else [noise[0][f:f + 1], noise[1][f:f + 1]]
        lat = {}

        def cb(p, i, t_, kw):
            lat["final"] = kw["latents"].clone()
            return {}

        State.active = True
        try:
            res = pipe(prompt=PROMPT, negative_prompt=NEG, image=fr, strength=G.STRENGTH,
                       num_inference_steps=G.STEPS, guidance_scale=guidance, eta=0.0, generator=gen,
                       output_type="pt", callback_on_step_end=cb, callback_on_step_end_tensor_inputs=["latents"])
        finally:
            State.active = False
        assert not REPLAY, "unused replay tensors"
        assert [c for c, _ in DRAWS] == ["vae.py", "pipeline_stable_diffusion_img2img.py"], [c for c, _ in DRAWS]
        steps.append(State.step + 1)
        lats.append(lat["final"])
        imgs.append(res.images.float())
        nv.append(DRAWS[0][1])
        na.append(DRAWS[1][1])
    if perms is not None:
        assert set(perms) == set(State.merges), "replayed permutations not all consumed"
    if isinstance(procs, dict):  # the processors' own counters agree with the hooks
        n_unet = sum(steps)
        for name, p in procs.items():
            assert p.frame_id == n_unet, (name, p.frame_id, n_unet)
    return {"final_latents": torch.cat(lats), "image_out": torch.cat(imgs), "noise_vae": torch.cat(nv),
            "noise_add": torch.cat(na), "unet_calls_per_frame": steps, "order": list(State.order),
            "merges": dict(State.merges), "merge_info": dict(State.merge_info), "inj": list(State.inj),
            "events": list(State.events), "choices": list(State.choices), "fragile": list(State.fragile)}


def summarize(r, opts, n_layers, n_run):
    """Events grouped per UNet call (asserting every layer did the same), injection counts, checks."""
    out = {}
    by_call = {}
    for f, s, l, kind, n_entries, toks in r["events"]:
        by_call.setdefault((f, s), []).append((l, kind, n_entries))
    events = []
    for (f, s), lst in sorted(by_call.items()):
        assert sorted(l for l, _, _ in lst) == list(range(n_layers)), (f, s, lst)
        kinds = {k for _, k, _ in lst}
        ents = {e for _, _, e in lst}
        assert len(kinds) == 1 and len(ents) == 1, (f, s, lst)
        events.append({"frame": f, "step": s, "unet_call": f * n_run + s, "event": kinds.pop(),
                       "bank_entries_after": ents.pop()})
    # expected schedule: frame_id % interval == 0 (frame_id = global UNet call counter)
    exp, n_entries = [], 0
    for g in range(NF * n_run):
        if g % opts["interval"] == 0:
            if opts["use_tome_cache"] and n_entries == 1:
                exp.append((g // n_run, g % n_run, "merged"))
            else:
                exp.append((g // n_run, g % n_run, "appended"))
                n_entries = min(n_entries + 1, opts["max_frames"])
    assert [(e["frame"], e["step"], e["event"]) for e in events] == exp, (events, exp)
    merged_calls = {(e["frame"], e["step"]) for e in events if e["event"] == "merged"}
    assert set(r["merges"]) == {(f, s, l) for f, s in merged_calls for l in range(n_layers)}, \
        "merge draws not one per self-attention layer at each merging update"
    injected = [0] * NF
    per_layer = {}
    for f, s, l, n, tot, margin, mx in r["inj"]:
        injected[f] += n
        per_layer.setdefault(l, [0] * NF)[f] += n
    out["events"] = events
    out["injected"] = injected
    out["injected_per_layer"] = {r["order"][l]: v for l, v in sorted(per_layer.items())}
    out["n_get_nn_feats_calls"] = len(r["inj"])
    out["get_nn_feats_calls_per_frame"] = [sum(1 for x in r["inj"] if x[0] == f) for f in range(NF)]
    out["tokens_compared_per_frame"] = [sum(x[4] for x in r["inj"] if x[0] == f) for f in range(NF)]
    if r["inj"]:
        out["min_abs_cosine_minus_threshold"] = min(x[5] for x in r["inj"])
        out["max_cosine_seen"] = max(x[6] for x in r["inj"])
    fr = {}
    for kind, _, n, harm in r["fragile"]:
        d = fr.setdefault(kind, {"count": 0} if harm is None else {"count": 0, "max_feature_change_if_flipped": 0.0})
        d["count"] += n
        if harm is not None:
            d["max_feature_change_if_flipped"] = max(d["max_feature_change_if_flipped"], harm)
    out["fragile_decisions(eps=%g)" % TIE_EPS] = fr
    if r["merge_info"]:
        out["merges"] = len(r["merges"])
        out["min_merge_top1_top2_gap"] = min(v["min_top1_top2_gap"] for v in r["merge_info"].values())
        out["max_srcs_on_one_dst"] = max(v["max_srcs_on_one_dst"] for v in r["merge_info"].values())
    return out


def choice_flips(a, b):
    """How many decisions (nearest neighbour among replaced tokens, merge destination, replaced or not) differ."""
    flips = {"nn": 0, "merge": 0, "replaced_mask": 0}
    assert [(k, key) for k, key, _, _ in a["choices"]] == [(k, key) for k, key, _, _ in b["choices"]]
    for (k, key, ia, ma), (_, _, ib, mb) in zip(a["choices"], b["choices"]):
        flips[k] += int(((ia != ib) & (ma | mb)).sum())
        if k == "nn":
            flips["replaced_mask"] += int((ma != mb).sum())
    return flips


def per_frame_max(a, b):
    return [float((a[i].double() - b[i].double()).abs().max()) for i in range(a.shape[0])]


def per_frame(a, b):
    return {"final_latents_max_abs": per_frame_max(a["final_latents"], b["final_latents"]),
            "image_out_max_abs": per_frame_max(a["image_out"], b["image_out"])}


def preview(path, frames_in, results, cases):
    rows = [np.concatenate([np.asarray(f) for f in frames_in], axis=1)]
    for c in cases:
        im = results[c]["image_out"]
        rows.append(np.concatenate([(im[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                                    for i in range(im.shape[0])], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def load_pipe(path, dtype=torch.float32):
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)
    if dtype != torch.float32:
        pipe = pipe.to(dtype)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    instrument(pipe.unet)
    return pipe


# ---------------------------------------------------------------- main
@torch.no_grad()
def run_variant(name):
    W, H = G.VARIANTS[name]
    path = os.path.join(MODELS, name)
    pipe = load_pipe(path)
    unet, te, tok = pipe.unet, pipe.text_encoder, pipe.tokenizer
    orig_procs = unet.attn_processors
    raw, frames, ffmpeg_cmd = G.clip_frames(W, H, CLIP, START, NF)
    # the JSON stays identical between runs: no temp dir name, paths relative to the repository
    ffmpeg_cmd = re.sub(r"\S*/f%03d\.png$", "<tmpdir>/f%03d.png", ffmpeg_cmd).replace(REPO + os.sep, "")
    x = pipe.image_processor.preprocess(frames)  # [F,3,H,W] in [-1,1]
    manual = torch.from_numpy(np.stack([np.asarray(f) for f in frames])).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    assert torch.equal(x, manual)
    xf = os.path.join(OUT, name, "img2img_crossframe.safetensors")  # the same frames as golden_crossframe.py
    same_as_crossframe = None
    if os.path.exists(xf) and (START, NF) == (100, 3):
        same_as_crossframe = bool(torch.equal(load_file(xf)["image_in"], x))
        assert same_as_crossframe, "frames differ from golden_crossframe.py's"
    n_run = min(int(G.STEPS * G.STRENGTH), G.STEPS)

    cases = dict(CASES)
    res, summ = {}, {}
    for c, (guid, opts) in cases.items():
        res[c] = run_case(pipe, frames, guid, opts)
    noise_vae, noise_add = res["tome"]["noise_vae"], res["tome"]["noise_add"]
    order = res["tome"]["order"]
    n_layers = len(order)
    for c, (guid, opts) in cases.items():
        assert torch.equal(res[c]["noise_vae"], noise_vae) and torch.equal(res[c]["noise_add"], noise_add), c
        assert res[c]["unet_calls_per_frame"] == [n_run] * NF, res[c]["unet_calls_per_frame"]
        assert res[c]["order"] == order, c
        if opts is not None:
            summ[c] = summarize(res[c], opts, n_layers, n_run)
    # frames draw different noises (one generator per case)
    assert not torch.equal(noise_vae[0], noise_vae[1])
    never = [c for c in summ if sum(summ[c]["injected"]) == 0]
    if never:
        c, (guid, opts) = EXTRA_CASE
        cases[c] = (guid, opts)
        res[c] = run_case(pipe, frames, guid, opts)
        assert torch.equal(res[c]["noise_vae"], noise_vae) and torch.equal(res[c]["noise_add"], noise_add), c
        summ[c] = summarize(res[c], opts, n_layers, n_run)
    # unsaved baseline for tome_noguidance
    ind1 = run_case(pipe, frames, 1.0, None)
    assert torch.equal(ind1["noise_vae"], noise_vae) and torch.equal(ind1["noise_add"], noise_add)
    # determinism: rerun of tome
    rerun = run_case(pipe, frames, *cases["tome"])
    rerun_identical = (torch.equal(rerun["final_latents"], res["tome"]["final_latents"])
                       and torch.equal(rerun["image_out"], res["tome"]["image_out"]))
    # replaying tome's recorded permutations in float32 gives the same result (checks the replay path)
    replay32 = run_case(pipe, frames, *cases["tome"], noise=(noise_vae, noise_add), perms=res["tome"]["merges"])
    replay_identical = (torch.equal(replay32["final_latents"], res["tome"]["final_latents"])
                        and torch.equal(replay32["image_out"], res["tome"]["image_out"]))
    assert replay_identical
    # sensitivity check (unsaved): the same run with the attention computed by torch's SDPA kernel (another f32
    # summation order, as a port's would be), noises and permutations replayed
    sens = {}
    SHIM_IMPL[0] = "sdpa"
    try:
        for c in summ:
            rs = run_case(pipe, frames, *cases[c], noise=(noise_vae, noise_add), perms=res[c]["merges"] or None)
            sens[c] = {**per_frame(rs, res[c]), "choices_flipped": choice_flips(res[c], rs),
                       "injected": summarize(rs, cases[c][1], n_layers, n_run)["injected"]}
    finally:
        SHIM_IMPL[0] = "plain"
    unet.set_attn_processor(dict(orig_procs))

    # float64 re-run of tome: noises and merge permutations replayed
    pipe64 = load_pipe(path, torch.float64)
    r64 = run_case(pipe64, frames, *cases["tome"], noise=(noise_vae.double(), noise_add.double()),
                   perms=res["tome"]["merges"])
    assert r64["final_latents"].dtype == torch.float64
    s64 = summarize(r64, cases["tome"][1], n_layers, n_run)
    flips = choice_flips(res["tome"], r64)
    del pipe64

    # ---- save
    neg_ids, pos_ids = tokenize(tok, [NEG]), tokenize(tok, [PROMPT])
    tensors = {"image_in": x, "prompt_input_ids": pos_ids, "negative_input_ids": neg_ids,
               "prompt_embeds": torch.cat([te(neg_ids)[0], te(pos_ids)[0]]),
               "noise_vae": noise_vae, "noise_add": noise_add, "timesteps": pipe.scheduler.timesteps.clone()}
    h, w = noise_vae.shape[-2:]
    assert tuple(noise_vae.shape) == (NF, 4, h, w)
    for c in cases:
        tensors[f"{c}.final_latents"] = res[c]["final_latents"]
        tensors[f"{c}.image_out"] = res[c]["image_out"]
        if c in summ:
            tensors[f"{c}.injected"] = torch.tensor(summ[c]["injected"], dtype=torch.int64)
        for (f, s, l), perm in sorted(res[c]["merges"].items()):
            tensors[f"{c}.merge.f{f}.s{s}.l{l}"] = perm.to(torch.int16)
        # The reference's discrete choices, which a port replays where its own is a near tie.
        for kind, (f, s, l), idx, replaced in res[c]["choices"]:
            if kind == "merge":
                tensors[f"{c}.into.f{f}.s{s}.l{l}"] = idx.to(torch.int16)
            else:
                tensors[f"{c}.nearest.f{f}.s{s}.l{l}"] = torch.where(replaced, idx, -1).to(torch.int16)
    out_dir = os.path.join(OUT, name)
    os.makedirs(out_dir, exist_ok=True)
    st_path = os.path.join(out_dir, "stream.safetensors")
    save_file(tensors, st_path)
    os.chmod(st_path, 0o644)
    os.makedirs(CACHE, exist_ok=True)
    preview(os.path.join(CACHE, f"stream_preview_{name}.png"), frames, res, list(cases))

    # ---- figures
    ind = res["independent"]
    diffs = {f"{c}_vs_independent": per_frame(res[c], ind) for c in cases if c != "independent"}
    diffs["tome_noguidance_vs_independent_noguidance(unsaved, guidance 1.0)"] = per_frame(res["tome_noguidance"], ind1)
    diffs["tome_vs_tome_noguidance"] = per_frame(res["tome"], res["tome_noguidance"])
    diffs["tome_vs_fifo2"] = per_frame(res["tome"], res["fifo2"])
    fp64 = {"final_latents": stats(res["tome"]["final_latents"], r64["final_latents"]),
            "image_out": stats(res["tome"]["image_out"], r64["image_out"]),
            "per_frame": per_frame(res["tome"], r64),
            "injected_fp64": s64["injected"],
            "injected_same_as_fp32": s64["injected"] == summ["tome"]["injected"],
            "choices_flipped_vs_fp32": flips,
            "note": "pipeline .to(float64), the recorded noises and merge permutations replayed; the processor does "
                    "not use upcast_attention (the xformers path ignores it), so nothing is switched off"}
    layers = []
    for li, nm in enumerate(order):
        mod = unet.get_submodule(nm)
        key = (0, 4, li)
        tok_n = res["tome"]["merge_info"][key]["M"] // 2 if key in res["tome"]["merge_info"] else None
        layers.append({"index": li, "name": nm, "processor": nm + ".processor", "heads": mod.heads,
                       "scale": mod.scale, "tokens": tok_n,
                       "injects": any(mk in nm + ".processor" for mk in INJECT_MARKERS)})
    sch = pipe.scheduler
    meta = {
        "variant": name, "file": os.path.relpath(st_path, REPO),
        "file_bytes": os.path.getsize(st_path),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "reference": {"repo": "Jeff-LiangF/streamv2v", "commit": STREAMV2V_COMMIT, "files": REF_INFO,
                      "class": "CachedSTXFormersAttnProcessor", "shims": SHIMS,
                      "instrumentation": "attention_processor.random_bipartite_soft_matching and .get_nn_feats "
                                         "wrapped (record/replay torch.rand as a permutation; count injections); "
                                         "forward hooks on the UNet and the attn1 modules"},
        "model_dir": os.path.relpath(path, REPO),
        "frames": {"clip": os.path.relpath(CLIP, REPO), "frame_numbers": list(range(START, START + NF)),
                   "image_in_equals_img2img_crossframe": same_as_crossframe,
                   "clip_size_wh": list(raw[0].size), "ffmpeg": ffmpeg_cmd,
                   "resize": f"PIL bicubic to {W}x{H} (aspect not kept), RGB/255*2-1, NCHW"},
        "prompt": PROMPT, "negative_prompt": NEG,
        "params": {"strength": G.STRENGTH, "steps": G.STEPS, "seed": G.SEED, "eta": 0.0, "F": NF,
                   "generator": "one torch.Generator().manual_seed(seed) per case, passed to every frame's call"},
        "order": "one StableDiffusionImg2ImgPipeline call per frame (0..F-1), the same processor objects throughout "
                 "(StreamV2V use_denoising_batch=False order); processor frame_id = global UNet call counter "
                 "= frame*unet_calls_per_frame + step",
        "scheduler_class": type(sch).__name__, "scheduler_config": dict(sch.config),
        "timesteps_run": [int(t) for t in sch.timesteps[len(sch.timesteps) - n_run:]],
        "unet_calls_per_frame": n_run,
        "vae_scaling_factor": pipe.vae.config.scaling_factor, "image_size_wh": [W, H], "latent_size_hw": [h, w],
        "cfg_batch_layout": "[uncond, cond] (guidance > 1); the bank keeps one row per batch row",
        "cases": {c: {"guidance": g_, "processor": "AttnProcessor" if o is None else "CachedSTXFormersAttnProcessor",
                      "options": o} for c, (g_, o) in cases.items()},
        "tome_t090_added": "tome_t090" in cases, "cases_never_injecting": never,
        "self_attention_layers": layers,
        "per_case": summ,
        "shapes": {k: list(v.shape) for k, v in tensors.items()},
        "dtypes": {k: str(v.dtype).replace("torch.", "") for k, v in tensors.items()},
        "diffs_between_cases": diffs,
        "checks": {"rerun_identical": bool(rerun_identical), "draws_identical_in_all_cases": True,
                   "replay_of_recorded_permutations_identical_fp32": bool(replay_identical),
                   "merge_permutations_stored_as": "perm = torch.rand(B,M,1).argsort(dim=1)[..., 0]"},
        "sensitivity_sdpa_attention_shim_vs_plain(unsaved)": {
            "what": "each stateful case re-run in float32 with the xformers shim computing the same attention through "
                    "torch's scaled_dot_product_attention (another summation order, as a port's would be), noises and "
                    "merge permutations replayed; per-frame max|delta| against the saved outputs and how many "
                    "decisions flipped (nearest neighbour of a replaced token, merge destination, replaced or not)",
            **sens},
        "fp64_vs_fp32_tome": fp64,
    }
    with open(os.path.join(out_dir, "stream.json"), "w") as fjs:
        json.dump(meta, fjs, indent=1, default=str)
    print(name, json.dumps({"layers": [(l["name"], l["tokens"], l["injects"]) for l in layers],
                            "per_case": {c: {k: v for k, v in s.items() if k != "injected_per_layer"}
                                         for c, s in summ.items()},
                            "diffs": diffs,
                            "fp64": {k: fp64[k] for k in ("per_frame", "injected_fp64")},
                            "checks": meta["checks"], "fp64_flips": fp64["choices_flipped_vs_fp32"],
                            "sensitivity": sens,
                            "bytes": meta["file_bytes"]}, indent=1))
    return meta


def main():
    for v in G.VARIANTS:
        run_variant(v)


if __name__ == "__main__":
    main()
