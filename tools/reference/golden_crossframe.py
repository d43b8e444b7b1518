#!/usr/bin/env python3
"""Golden for cross-frame attention img2img (Text2Video-Zero style) on the tiny SD fixtures.

For V in {tiny-sd, tiny-sd2} writes <OUT>/V/img2img_crossframe.safetensors and
<OUT>/V/img2img_crossframe.json (OUT defaults to tests/fixtures/sd/golden; models are read from
tests/fixtures/sd/V, diffusers layout; float32, CPU, 2 threads).

FRAMES: F = 3 consecutive frames (n = 100, 101, 102) of tests/data/bikes.mp4 (640x272, 25 fps),
decoded by ffmpeg to PNG (`-vf select=between(n,100,102) -vsync 0`), converted to RGB and resized with
PIL bicubic to golden_sd.py's variant sizes (tiny-sd 64x48, tiny-sd2 112x96; the 2.35:1 clip is
squashed, no crop), preprocessed RGB/255*2-1, NCHW (= pipe.image_processor.preprocess).

ONE img2img run on the batch of F frames: StableDiffusionImg2ImgPipeline, prompt = [prompt0]*F,
negative "" (×F), DDIM from the model's scheduler config, strength 0.6, 10 steps (6 run:
t = 501,401,301,201,101,1), guidance 7.5, generator seed 42, eta 0. With CFG the UNet batch is
[uncond f0..f(F-1), cond f0..f(F-1)] (latents = cat([latents]*2), prompt_embeds = cat([neg×F, pos×F])).
UNet attention processors, one case each (the VAE keeps its own processors):
  crossframe_first            diffusers' CrossFrameAttnProcessor(batch_size=2) (Text2Video-Zero;
                              diffusers 0.42.1 moved it to diffusers.pipelines.deprecated.text_to_video_synthesis
                              .pipeline_text_to_video_zero). Read in the source: it is the classic AttnProcessor
                              maths (to_q/to_k/to_v, head_to_batch_dim, get_attention_scores = baddbmm*scale +
                              softmax, bmm, to_out) and, ONLY when encoder_hidden_states is None (self-attention,
                              i.e. every attn1 of every BasicTransformerBlock in down/mid/up blocks), reshapes the
                              projected K and V [B,N,C] to [batch_size, B/batch_size, N, C], replaces every frame's
                              K/V by frame 0's of the same half (index [0]*F) and reshapes back. Queries are
                              untouched, cross-attention (attn2, text K/V) is untouched. batch_size=2 makes the
                              halves [uncond×F] and [cond×F] take their own frame 0.
  crossframe_first_self       custom processor below (same maths): self-attention K/V = concat along tokens of
                              [frame 0's K/V, the frame's own K/V] (2N keys). For frame 0 that is its own K/V twice,
                              which equals plain self-attention (every key duplicated: softmax weights halve, sum
                              unchanged).
  independent                 plain AttnProcessor (every frame on its own) - the baseline.
  crossframe_first_noguidance as crossframe_first but guidance 1.0 (no CFG, UNet batch F) with
                              CrossFrameAttnProcessor(batch_size=1).
All cases draw the SAME noises (reseeded with 42, the draws are recorded and asserted equal), so the
frame-0 outputs of the cross-frame cases equal those of `independent` (frame 0 attends only to itself).

KEYS (F = 3, h,w = latent size):
  image_in [F,3,H,W] in [-1,1]; prompt_input_ids / negative_input_ids [1,77] int64;
  prompt_embeds [2,77,D] = [negative "", prompt0] (one copy; the pipeline repeats each ×F);
  noise_vae [F,4,h,w]  (vae posterior sample: z = mean + exp(0.5*clamp(logvar,-30,20)) * noise_vae, x0 = sf*z)
  noise_add [F,4,h,w]  (scheduler.add_noise(x0, noise_add, t0)); DDIM with eta 0 draws nothing else
  timesteps [10] int64 (full schedule; the last int(10*0.6)=6 run)
  <case>.final_latents [F,4,h,w], <case>.image_out [F,3,H,W] = clamp(vae.decode(lat/sf)/2+0.5, 0, 1) float32
The JSON holds the parameters, prompts, frame source, self-attention layer list and the measured figures:
per-frame max|Δ| between cases, a float64 re-run of crossframe_first (replaying the recorded noises),
and a SEQUENTIAL re-run (frame 0 alone while capturing each self-attention layer's projected K/V per UNet
call, then each later frame alone with frame 0's captured K/V: the way a port without batching does it)
compared with the batched run.

Usage: python golden_crossframe.py   (env: GOLDEN_MODELS=dir with tiny-sd/, tiny-sd2/; GOLDEN_OUT=out dir;
CROSSFRAME_CLIP, CROSSFRAME_START, CROSSFRAME_FRAMES; GOLDEN_PROMPTS/GOLDEN_SIZES/GOLDEN_PARAMS as golden_sd.py)
"""
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
# golden_sd: sets 2 threads, imports diffusers, wraps randn_tensor; we reuse its helpers and parameters
import golden_sd as G  # noqa: E402
from golden_sd import save_file, stats, tokenize  # noqa: E402

import diffusers  # noqa: E402
from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline  # noqa: E402
from diffusers.models.attention_processor import Attention, AttnProcessor  # noqa: E402

try:  # diffusers >= 0.3x moved Text2Video-Zero under pipelines/deprecated
    from diffusers.pipelines.deprecated.text_to_video_synthesis import pipeline_text_to_video_zero as T2VZ
except ImportError:  # older layout named in the brief
    from diffusers.pipelines.text_to_video_synthesis import pipeline_text_to_video_zero as T2VZ
CrossFrameAttnProcessor = T2VZ.CrossFrameAttnProcessor

MODELS = os.environ.get("GOLDEN_MODELS", os.path.join(REPO, "tests", "fixtures", "sd"))
OUT = os.environ.get("GOLDEN_OUT", os.path.join(REPO, "tests", "fixtures", "sd", "golden"))
CLIP = os.environ.get("CROSSFRAME_CLIP", os.path.join(REPO, "tests", "data", "bikes.mp4"))
START = int(os.environ.get("CROSSFRAME_START", "100"))
NF = int(os.environ.get("CROSSFRAME_FRAMES", "3"))
PROMPT = G.PROMPTS[0]
NEG = ""
CASES = ("crossframe_first", "crossframe_first_self", "independent", "crossframe_first_noguidance")

# ---------------------------------------------------------------- RNG: record or replay every draw
DRAWS, REPLAY = G.replay_draws()  # (caller file, tensor) of the current run; tensors to hand out instead


# ---------------------------------------------------------------- attention processors
class KVRuleProcessor:
    """CrossFrameAttnProcessor's maths (= classic AttnProcessor for the UNet's transformer attentions),
    with the self-attention K/V [B,N,C] (after to_k/to_v, before the head split) replaced by self.self_kv()."""

    def __init__(self, batch_size=2):
        self.batch_size = batch_size

    def self_kv(self, key, value):
        raise NotImplementedError

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None):
        assert hidden_states.ndim == 3 and attn.group_norm is None and attn.spatial_norm is None
        assert not attn.residual_connection and attn.rescale_output_factor == 1.0
        batch_size, sequence_length, _ = hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        query = attn.to_q(hidden_states)
        is_cross_attention = encoder_hidden_states is not None
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        if not is_cross_attention:
            key, value = self.self_kv(key, value)
        query = attn.head_to_batch_dim(query)
        key = attn.head_to_batch_dim(key)
        value = attn.head_to_batch_dim(value)
        attention_probs = attn.get_attention_scores(query, key, attention_mask)
        hidden_states = torch.bmm(attention_probs, value)
        hidden_states = attn.batch_to_head_dim(hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)


def _halves(t, batch_size):
    """[batch_size*F, N, C] -> [batch_size, F, N, C]"""
    return t.reshape(batch_size, t.shape[0] // batch_size, *t.shape[1:])


class CrossFrameFirstCopy(KVRuleProcessor):
    """Our copy of CrossFrameAttnProcessor's rule (K/V of frame 0 of each half); checked == diffusers'."""

    def self_kv(self, key, value):
        f = lambda t: _halves(t, self.batch_size)[:, [0] * (t.shape[0] // self.batch_size)].reshape(t.shape)  # noqa
        return f(key), f(value)


class CrossFrameFirstSelfProcessor(KVRuleProcessor):
    """Self-attention K/V = cat_tokens([frame 0 of the same half, own frame]) -> [B, 2N, C]."""

    def self_kv(self, key, value):
        def f(t):
            h = _halves(t, self.batch_size)
            h = torch.cat([h[:, [0] * h.shape[1]], h], dim=2)
            return h.reshape(t.shape[0], 2 * t.shape[1], t.shape[2])
        return f(key), f(value)


class SequentialAnchorProcessor(KVRuleProcessor):
    """One frame per pipeline run. state['mode'] == 'capture' (the anchor, frame 0): keep this layer's
    projected self-attention K/V of every UNet call; 'replay' (later frames): use the anchor's K/V of the
    same UNet call (rule 'first') or cat_tokens([anchor, own]) (rule 'first_self')."""

    def __init__(self, name, rule, state):
        super().__init__()
        self.name, self.rule, self.state = name, rule, state
        self.cache, self.i = [], 0

    def self_kv(self, key, value):
        if self.state["mode"] == "capture":
            self.cache.append((key.clone(), value.clone()))
            ak, av = key, value
        else:
            ak, av = self.cache[self.i]
            self.i += 1
            assert ak.shape == key.shape, (self.name, ak.shape, key.shape)
        if self.rule == "first":
            return ak, av
        return torch.cat([ak, key], dim=1), torch.cat([av, value], dim=1)


# ---------------------------------------------------------------- helpers
def load_frames(w, h):
    return G.clip_frames(w, h, CLIP, START, NF)


def per_frame_max(a, b):
    return [float((a[i].double() - b[i].double()).abs().max()) for i in range(a.shape[0])]


def per_frame(a, b):
    return {"final_latents_max_abs": per_frame_max(a["final_latents"], b["final_latents"]),
            "image_out_max_abs": per_frame_max(a["image_out"], b["image_out"])}


def run(pipe, procs, images, prompts, guidance, replay=None):
    """One img2img call; returns final latents, image_out and the draws (recorded or replayed)."""
    pipe.unet.set_attn_processor(dict(procs) if isinstance(procs, dict) else procs)  # it pops from a dict
    DRAWS.clear()
    REPLAY[:] = list(replay or [])
    lat = {}

    def cb(p, i, t_, kw):
        lat["final"] = kw["latents"].clone()
        return {}

    res = pipe(prompt=prompts, negative_prompt=[NEG] * len(prompts), image=images, strength=G.STRENGTH,
               num_inference_steps=G.STEPS, guidance_scale=guidance, eta=0.0,
               generator=torch.Generator().manual_seed(G.SEED), output_type="pt",
               callback_on_step_end=cb, callback_on_step_end_tensor_inputs=["latents"])
    assert not REPLAY, "unused replay tensors"
    draws = list(DRAWS)
    assert [c for c, _ in draws] == ["vae.py", "pipeline_stable_diffusion_img2img.py"], [c for c, _ in draws]
    return {"final_latents": lat["final"], "image_out": res.images.float(),
            "noise_vae": draws[0][1], "noise_add": draws[1][1]}


def sequential(pipe, frames, rule, guidance, noise_vae, noise_add):
    """Frame 0 alone (capturing K/V), then frames 1.. alone with frame 0's K/V; returns stacked outputs."""
    state = {"mode": "capture"}
    procs = {}
    for name in pipe.unet.attn_processors:
        procs[name] = SequentialAnchorProcessor(name, rule, state)
    lats, imgs = [], []
    for j, fr in enumerate(frames):
        state["mode"] = "capture" if j == 0 else "replay"
        for p in procs.values():
            p.i = 0
        r = run(pipe, procs, [fr], [PROMPT], guidance, replay=[noise_vae[j:j + 1], noise_add[j:j + 1]])
        if j > 0:
            for p in procs.values():
                assert p.i == len(p.cache), (p.name, p.i, len(p.cache))
        lats.append(r["final_latents"])
        imgs.append(r["image_out"])
    layers = [{"name": n[:-len(".processor")], "tokens": p.cache[0][0].shape[1], "dim": p.cache[0][0].shape[2],
               "kv_batch": p.cache[0][0].shape[0], "unet_calls": len(p.cache)}
              for n, p in procs.items() if p.cache]
    return {"final_latents": torch.cat(lats), "image_out": torch.cat(imgs)}, layers


def preview(path, frames_in, results):
    rows = [np.concatenate([np.asarray(f) for f in frames_in], axis=1)]
    for c in CASES:
        im = results[c]["image_out"]
        rows.append(np.concatenate([(im[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                                    for i in range(im.shape[0])], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


# ---------------------------------------------------------------- main
@torch.no_grad()
def run_variant(name):
    W, H = G.VARIANTS[name]
    path = os.path.join(MODELS, name)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    unet, te, tok = pipe.unet, pipe.text_encoder, pipe.tokenizer
    orig_procs = unet.attn_processors
    raw, frames, ffmpeg_cmd = load_frames(W, H)
    x = pipe.image_processor.preprocess(frames)  # [F,3,H,W] in [-1,1]
    manual = torch.from_numpy(np.stack([np.asarray(f) for f in frames])).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    assert torch.equal(x, manual)
    prompts = [PROMPT] * NF

    res = {}
    res["crossframe_first"] = run(pipe, CrossFrameAttnProcessor(batch_size=2), frames, prompts, G.GUIDANCE)
    noise_vae, noise_add = res["crossframe_first"]["noise_vae"], res["crossframe_first"]["noise_add"]
    rerun = run(pipe, CrossFrameAttnProcessor(batch_size=2), frames, prompts, G.GUIDANCE)
    res["crossframe_first_self"] = run(pipe, CrossFrameFirstSelfProcessor(batch_size=2), frames, prompts, G.GUIDANCE)
    res["independent"] = run(pipe, AttnProcessor(), frames, prompts, G.GUIDANCE)
    res["crossframe_first_noguidance"] = run(pipe, CrossFrameAttnProcessor(batch_size=1), frames, prompts, 1.0)
    # extra, not saved
    extra = {
        "copy": run(pipe, CrossFrameFirstCopy(batch_size=2), frames, prompts, G.GUIDANCE),
        "sdpa": run(pipe, T2VZ.CrossFrameAttnProcessor2_0(batch_size=2), frames, prompts, G.GUIDANCE),
        "independent_noguidance": run(pipe, AttnProcessor(), frames, prompts, 1.0),
        "noguidance_bs2": run(pipe, CrossFrameAttnProcessor(batch_size=2), frames, prompts, 1.0),
        "independent_sdpa": run(pipe, orig_procs, frames, prompts, G.GUIDANCE),
    }
    for k, r in list(res.items()) + list(extra.items()) + [("rerun", rerun)]:
        assert torch.equal(r["noise_vae"], noise_vae) and torch.equal(r["noise_add"], noise_add), k
    h, w = noise_vae.shape[-2:]
    assert tuple(noise_vae.shape) == (NF, 4, h, w)

    # sequential (per-frame) runs with the anchor's K/V cached per layer and per UNet call
    seq = {}
    seq["crossframe_first"], layers = sequential(pipe, frames, "first", G.GUIDANCE, noise_vae, noise_add)
    seq["crossframe_first_self"], _ = sequential(pipe, frames, "first_self", G.GUIDANCE, noise_vae, noise_add)
    seq["crossframe_first_noguidance"], _ = sequential(pipe, frames, "first", 1.0, noise_vae, noise_add)
    unet.set_attn_processor(dict(orig_procs))

    # float64 re-run of crossframe_first with the recorded noises
    pipe64 = StableDiffusionImg2ImgPipeline.from_pretrained(path, safety_checker=None,
                                                            requires_safety_checker=False).to(torch.float64)
    pipe64.set_progress_bar_config(disable=True)
    pipe64.scheduler = DDIMScheduler.from_config(pipe64.scheduler.config)
    n_upcast = 0
    for m in pipe64.unet.modules():  # upcast_attention would compute QK^T in float32 (tiny-sd2)
        if isinstance(m, Attention) and m.upcast_attention:
            m.upcast_attention = False
            n_upcast += 1
    r64 = run(pipe64, CrossFrameAttnProcessor(batch_size=2), frames, prompts, G.GUIDANCE,
              replay=[noise_vae.double(), noise_add.double()])
    assert r64["final_latents"].dtype == torch.float64
    del pipe64

    # ---- save
    neg_ids, pos_ids = tokenize(tok, [NEG]), tokenize(tok, [PROMPT])
    tensors = {"image_in": x, "prompt_input_ids": pos_ids, "negative_input_ids": neg_ids,
               "prompt_embeds": torch.cat([te(neg_ids)[0], te(pos_ids)[0]]),
               "noise_vae": noise_vae, "noise_add": noise_add, "timesteps": pipe.scheduler.timesteps.clone()}
    for c in CASES:
        tensors[f"{c}.final_latents"] = res[c]["final_latents"]
        tensors[f"{c}.image_out"] = res[c]["image_out"]
    out_dir = os.path.join(OUT, name)
    os.makedirs(out_dir, exist_ok=True)
    st_path = os.path.join(out_dir, "img2img_crossframe.safetensors")
    save_file(tensors, st_path)
    os.chmod(st_path, 0o644)
    os.makedirs(os.path.join(HERE, ".cache"), exist_ok=True)
    preview(os.path.join(HERE, ".cache", f"crossframe_preview_{name}.png"), frames, res)

    # ---- figures
    ind, ind1 = res["independent"], extra["independent_noguidance"]
    diffs = {
        "crossframe_first_vs_independent": per_frame(res["crossframe_first"], ind),
        "crossframe_first_self_vs_independent": per_frame(res["crossframe_first_self"], ind),
        "crossframe_first_vs_crossframe_first_self": per_frame(res["crossframe_first"], res["crossframe_first_self"]),
        "crossframe_first_noguidance_vs_independent_noguidance(unsaved)": per_frame(
            res["crossframe_first_noguidance"], ind1),
        "crossframe_first_noguidance_vs_crossframe_first": per_frame(
            res["crossframe_first_noguidance"], res["crossframe_first"]),
    }
    for k, d in diffs.items():
        if k.endswith("independent") or "independent_noguidance" in k:
            for key in ("final_latents_max_abs", "image_out_max_abs"):
                assert d[key][0] < 1e-5 and min(d[key][1:]) > 1e-3, (k, d)
    checks = {
        "rerun_identical": bool(torch.equal(rerun["final_latents"], res["crossframe_first"]["final_latents"])
                                and torch.equal(rerun["image_out"], res["crossframe_first"]["image_out"])),
        "draws_identical_in_all_runs": True,
        "own_copy_of_rule_vs_diffusers_CrossFrameAttnProcessor": per_frame(extra["copy"], res["crossframe_first"]),
        "CrossFrameAttnProcessor2_0(sdpa)_vs_CrossFrameAttnProcessor": per_frame(extra["sdpa"],
                                                                                  res["crossframe_first"]),
        "independent_AttnProcessor_vs_default_sdpa_processors": per_frame(ind, extra["independent_sdpa"]),
        "noguidance_with_wrong_batch_size_2_vs_independent_noguidance": per_frame(extra["noguidance_bs2"], ind1),
    }
    fp64 = {"final_latents": stats(res["crossframe_first"]["final_latents"], r64["final_latents"]),
            "image_out": stats(res["crossframe_first"]["image_out"], r64["image_out"]),
            "per_frame": per_frame(res["crossframe_first"], r64),
            "note": f"pipeline .to(float64), recorded noises replayed; upcast_attention switched off on "
                    f"{n_upcast} Attention modules of the fp64 UNet (else QK^T runs in float32)"}
    seqd = {c: {"final_latents": stats(seq[c]["final_latents"], res[c]["final_latents"]),
                "image_out": stats(seq[c]["image_out"], res[c]["image_out"]),
                "per_frame": per_frame(seq[c], res[c])} for c in seq}
    sch = pipe.scheduler
    n_run = min(int(G.STEPS * G.STRENGTH), G.STEPS)
    meta = {
        "variant": name, "file": os.path.relpath(st_path, REPO),
        "file_bytes": os.path.getsize(st_path),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "model_dir": os.path.relpath(path, REPO),
        "frames": {"clip": os.path.relpath(CLIP, REPO), "frame_numbers": list(range(START, START + NF)),
                   "clip_size_wh": list(raw[0].size), "ffmpeg": ffmpeg_cmd,
                   "resize": f"PIL bicubic to {W}x{H} (aspect not kept), RGB/255*2-1, NCHW"},
        "prompt": PROMPT, "negative_prompt": NEG, "prompts_per_run": f"[prompt]*{NF}, [negative]*{NF}",
        "params": {"strength": G.STRENGTH, "steps": G.STEPS, "guidance": G.GUIDANCE,
                   "guidance_noguidance_case": 1.0, "seed": G.SEED, "eta": 0.0, "F": NF},
        "scheduler_class": type(sch).__name__, "scheduler_config": dict(sch.config),
        "timesteps_run": [int(t) for t in sch.timesteps[len(sch.timesteps) - n_run:]],
        "vae_scaling_factor": pipe.vae.config.scaling_factor, "image_size_wh": [W, H], "latent_size_hw": [h, w],
        "cfg_batch_layout": "[uncond f0..f{F-1}, cond f0..f{F-1}]; noise_pred.chunk(2) -> (uncond, cond)",
        "cases": {
            "crossframe_first": "CrossFrameAttnProcessor(batch_size=2): self-attn K/V := frame 0's (same CFG half)",
            "crossframe_first_self": "self-attn K/V := cat_tokens([frame 0, own]) (same CFG half), 2N keys",
            "independent": "AttnProcessor (no cross-frame)",
            "crossframe_first_noguidance": "guidance 1.0 (no CFG), CrossFrameAttnProcessor(batch_size=1)"},
        "self_attention_layers": layers,
        "shapes": {k: list(v.shape) for k, v in tensors.items()},
        "dtypes": {k: str(v.dtype).replace("torch.", "") for k, v in tensors.items()},
        "diffs_between_cases": diffs,
        "checks": checks,
        "fp64_vs_fp32_crossframe_first": fp64,
        "sequential_vs_batched": seqd,
    }
    with open(os.path.join(out_dir, "img2img_crossframe.json"), "w") as fjs:
        json.dump(meta, fjs, indent=1, default=str)
    print(name, json.dumps({"diffs": diffs, "fp64": {k: fp64[k]["max_abs"] for k in ("final_latents", "image_out")},
                            "seq": {c: {k: seqd[c][k]["max_abs"] for k in ("final_latents", "image_out")}
                                    for c in seqd}, "checks": checks}, indent=1))
    return meta


def main():
    for v in G.VARIANTS:
        run_variant(v)


if __name__ == "__main__":
    main()
