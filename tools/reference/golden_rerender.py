#!/usr/bin/env python3
"""Golden for Rerender-A-Video (diffusers community pipeline) on tiny-sd2 with one tiny ControlNet.

Writes <OUT>/tiny-sd2/rerender.safetensors and rerender.json (OUT defaults to tests/fixtures/sd/golden;
model tests/fixtures/sd/tiny-sd2, ControlNet tests/fixtures/sd/controlnet/tiny-sd2-a, diffusers layout;
float32, CPU, 2 threads).

REFERENCE: diffusers' examples/community/rerender_a_video.py (RerenderAVideoPipeline) at the pinned commit
DIFFUSERS_COMMIT below. It is not in the diffusers wheel and is NOT committed: it is put into
.cache/community/rerender_a_video.py from (first that works) env RERENDER_PY (a path), the local git mirror
(`git -C $RERENDER_MIRROR show COMMIT:examples/community/rerender_a_video.py`, default
/work/.mirror/huggingface+diffusers/repo), or raw.githubusercontent.com at COMMIT; then imported with importlib.
The file is run unchanged (the pinned commit is diffusers 0.40.0.dev0: its import of the removed
diffusers.pipelines.controlnet.multicontrolnet is answered by a sys.modules alias of
diffusers.models.controlnets.multicontrolnet.MultiControlNetModel, the class the removed shim subclassed). Its flow model (`from gmflow.gmflow import GMFlow`, a GMFlow built in __init__ with
weights from torch.utils.model_zoo.load_url) is replaced by a fake `gmflow.gmflow` module in sys.modules whose
GMFlow returns OUR flows (load_url returns {} while the pipeline is built): forward(img1, img2) gets two
preprocessed frames [1,3,H,W] in [-1,1] (InputPadder pads nothing: H, W are multiples of 8), identifies them
by exact comparison with image_in and returns {"flow_preds": [cat([fwd, bwd])]} ([2,2,H,W]). Everything else
(get_warped_and_mask, forward-backward consistency check, blur, shape-aware and pixel-aware fusion, the
cross-frame attention on the UNet's up blocks) is the reference's own code. Intermediates are recorded by
wrapping pipe.prepare_latents, vae.encode/decode, scheduler.add_noise, the module's find_flat_region /
get_warped_and_mask, the per-step callback and diffusers' randn_tensor.

FLOWS come from the Rust code (so both sides use identical flows): frames_u8 is written to
.cache/rerender_frames.safetensors and `cargo run --release -p stylizer --example sd_replay -- --part flows
--golden that --out .cache/rerender_flows.safetensors` runs stylizer::temporal::rerender::flow_pair (DIS) on
Gray::from_rgb of each frame pair.

FRAMES: F = 3 consecutive frames (n = 100..102) of tests/data/bikes.mp4, decoded by ffmpeg and resized with
PIL bicubic to 112x96 exactly as golden_crossframe.py does (its first 3 frames == its tiny-sd2 image_in).
Given to the pipeline as PIL images (pipe.image_processor.preprocess == image_in, checked);
control_frames = [image_in[f] in [0,1] as a [1,3,H,W] tensor].

RUN: RerenderAVideoPipeline(vae, text_encoder, tokenizer, unet, controlnet, DDIMScheduler.from_config(model's),
safety_checker=None, feature_extractor=None, requires_safety_checker=False); prompt = golden_sd prompt0,
negative_prompt "", guidance 7.5, num_inference_steps 10, strength 0.8, eta 0, generator seed 42 (reseeded per
case), output_type "pt", all Rerender parameters at their defaults (warp 0..0.3, mask 0.5..0.8, mask_strength
0.5, inner_strength 0.9, smooth_boundary True). Cases: control (controlnet_conditioning_scale 0.8) and
nocontrol (0.0: residuals exactly 0, checked, = no ControlNet). Both cases draw the same noises (asserted).
Schedule: timesteps (leading, offset 1) 901, 801, ..., 1; get_timesteps runs the last 8 (701, 601, ..., 1),
i = 0..7, but the reference's skip_t = int(10*(1-0.8)) = int(1.9999999999999996) = 1, so shape-aware fusion (warp of
frame 0's pred_x0, then add_noise(pred_x0, noise_pred, t)) fires where i+1 in [0,3] -> i = 0,1,2 (in BOTH
passes of a frame f >= 1) and pixel-aware fusion (fresh noise, add_noise(xtrg, noise, t), blend) where
i+1 in [5,8] -> i = 4..7 (pass 2 only). Verified by instrumentation, counts stored.
NOTE tiny-sd2 is v_prediction, but the reference's pred_x0 / dir_xt / add_noise(pred_x0, noise_pred, t) treat
the model output as epsilon anyway (only scheduler.step does v-prediction). The DDIM scheduler is therefore built
with prediction_type="epsilon" (as SD-2-base and SD 1.5 are), so that the golden shows the method as written and
a port that reads the output as the model predicts it matches (the Rust test sets the same).

RANDOM DRAWS per frame (diffusers' randn_tensor, recorded in call order, asserted):
  frame 0: noise_vae (vae.py sample: posterior of vae.encode(frame)), noise_add (prepare_latents)
  frame f >= 1: noise_vae, noise_add, noise_blend (posterior of vae.encode(blend_results)),
                noise_blend_rec (posterior of vae.encode(blend_results_rec)), mask4..mask7 (pass 2, step i)
  -> 2 + 8*(F-1) draws per case.

KEYS (F = 3, H,W = 96,112, h,w = 12,14; f32 unless said):
  frames_u8 [F,H,W,3] u8 (the pipeline's input: image_in = frames_u8/255*2-1, checked equal to its
      preprocessing; the control image = frames_u8/255; neither is stored);
  timesteps [10] int64 (full schedule); prompt_embeds [2,77,D] = [negative "", prompt0];
  flow.first.fwd/bwd, flow.prev.fwd/bwd [F,2,H,W] (row f >= 1: frame 0 <-> f / frame f-1 <-> f; fwd = earlier
      -> later, bwd = later -> earlier, channel 0 = dx in pixels; row 0 zeros);
  mask [F,1,h,w] (the latent blend mask given to find_flat_region, before * mask_strength; row 0 zeros;
      depends only on the flows, equal in both cases);
  f{f}.noise_vae, f{f}.noise_add [1,4,h,w]; for f >= 1 also f{f}.noise_blend, f{f}.noise_blend_rec,
      f{f}.mask{i}.noise (i = 4..7: step index among the 8 steps that run);
  per case C in (control, nocontrol):
    C.final_latents [F,4,h,w] (after the last pass; from the step callback: decode's input * sf differs by
      ~2e-7); C.image_out [F,3,H,W] in [0,1] (the pipeline's output);
    C.pass1_latents [F,4,h,w] (f >= 1: latents at the end of pass 1; row 0 = frame 0's final latents);
    C.shape_fused, C.pixel_fused [F] int64 (steps where each fusion fired, both passes summed:
      shape 0,6,6 = 3 per pass; pixel 0,4,4).
  (blend_results and the second loop's xtrg are recorded too; the JSON keeps their statistics.)
The JSON holds parameters, versions, the pinned commit and the file's sha256, the verified event order per
frame, per-pass fused steps, per-frame max|delta| control vs nocontrol, observed dtypes, the timesteps the
cross-frame attention maps are keyed by, and a float64 re-run of `control` with the recorded noises replayed.

Usage: python golden_rerender.py   (env: RERENDER_PY=path to rerender_a_video.py, RERENDER_MIRROR=git dir,
GOLDEN_OUT=out dir, GOLDEN_MODELS=dir with tiny-sd2/ and controlnet/; RERENDER_FP64=0 skips the float64 re-run;
RERENDER_FLOWS=file with the four flow.* tensors instead of running cargo - debugging only)
"""
import hashlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import types

import numpy as np
import torch
import torch.utils.model_zoo  # the reference calls torch.utils.model_zoo.load_url

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
CACHE = os.path.join(HERE, ".cache")
sys.path.insert(0, HERE)
import golden_sd as G  # noqa: E402  (2 threads, randn_tensor wrapped)
from golden_sd import save_file, stats, tokenize  # noqa: E402

import diffusers  # noqa: E402
import torchvision  # noqa: E402
from diffusers import ControlNetModel, DDIMScheduler, StableDiffusionImg2ImgPipeline  # noqa: E402
from diffusers.models.attention_processor import Attention  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

DIFFUSERS_COMMIT = "58eb52c0803ea9af3abec60841c2a093bdf1f951"  # huggingface/diffusers, 2026-08-23
COMMUNITY_PATH = "examples/community/rerender_a_video.py"
MIRROR = os.environ.get("RERENDER_MIRROR", "/work/.mirror/huggingface+diffusers/repo")
MODELS = os.environ.get("GOLDEN_MODELS", os.path.join(REPO, "tests", "fixtures", "sd"))
OUT = os.environ.get("GOLDEN_OUT", os.path.join(REPO, "tests", "fixtures", "sd", "golden"))
CLIP = os.path.join(REPO, "tests", "data", "bikes.mp4")
START, NF = 100, 3
VARIANT, W, H = "tiny-sd2", 112, 96
NET = "tiny-sd2-a"
PROMPT, NEG = G.PROMPTS[0], ""
STEPS, STRENGTH, GUIDANCE, SEED = 10, 0.8, 7.5, 42
CASES = {"control": 0.8, "nocontrol": 0.0}


# ---------------------------------------------------------------- the reference file
def obtain_reference():
    dst_dir = os.path.join(CACHE, "community")
    os.makedirs(dst_dir, exist_ok=True)
    dst = os.path.join(dst_dir, "rerender_a_video.py")
    text, source = G.pinned_source("huggingface/diffusers", DIFFUSERS_COMMIT, COMMUNITY_PATH, MIRROR,
                                   os.environ.get("RERENDER_PY"))
    with open(dst, "wb") as fh:
        fh.write(text)
    return dst, source, hashlib.sha256(text).hexdigest()


class FlowState:
    frames = None   # [F,3,H,W] float32, the preprocessed frames
    flows = None    # dict of [F,2,H,W]
    calls = []      # (earlier, later) per call


class FakeGMFlow(torch.nn.Module):
    """Stands in for GMFlow: returns the injected (Rust) flows of the two frames it is given."""

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs

    def _which(self, img):
        assert img.shape[0] == 1 and tuple(img.shape[1:]) == tuple(FlowState.frames.shape[1:]), img.shape
        hits = [i for i in range(FlowState.frames.shape[0]) if torch.equal(img[0].float(), FlowState.frames[i])]
        assert len(hits) == 1, hits
        return hits[0]

    def forward(self, img1, img2, **kw):
        assert kw.get("pred_bidir_flow") is True, kw
        a, b = self._which(img1), self._which(img2)
        FlowState.calls.append((a, b))
        if a == 0:
            kind = "first"
        else:
            assert a == b - 1, (a, b)
            kind = "prev"
        fl = FlowState.flows
        fwd, bwd = fl[f"flow.{kind}.fwd"][b:b + 1], fl[f"flow.{kind}.bwd"][b:b + 1]
        return {"flow_preds": [torch.cat([fwd, bwd]).to(img1.dtype)]}


def import_reference(path):
    gm = types.ModuleType("gmflow")
    gmg = types.ModuleType("gmflow.gmflow")
    gmg.GMFlow = FakeGMFlow
    gm.gmflow = gmg
    sys.modules["gmflow"], sys.modules["gmflow.gmflow"] = gm, gmg
    shims = []
    try:  # the pinned file imports the deprecated path, removed from the installed diffusers
        importlib.import_module("diffusers.pipelines.controlnet.multicontrolnet")
    except ModuleNotFoundError:
        from diffusers.models.controlnets import multicontrolnet as mc
        shim = types.ModuleType("diffusers.pipelines.controlnet.multicontrolnet")
        shim.MultiControlNetModel = mc.MultiControlNetModel
        sys.modules[shim.__name__] = shim
        shims.append(f"{shim.__name__}.MultiControlNetModel := diffusers.models.controlnets.multicontrolnet."
                     f"MultiControlNetModel (the removed module was a deprecation-warning subclass of it)")
    spec = importlib.util.spec_from_file_location("rerender_a_video", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["rerender_a_video"] = mod
    spec.loader.exec_module(mod)
    return mod, shims


# ---------------------------------------------------------------- event log (one run)
class EV:
    log = []      # (kind, frame, pass, step, info) in call order
    draws = []    # dicts: frame, caller, tensor, obj
    frame = -1
    pas = 0
    step = 0
    n_steps = 0
    replay = []
    data = {}


def _reset(n_steps, replay=None):
    EV.log, EV.draws, EV.frame, EV.pas, EV.step, EV.n_steps = [], [], -1, 0, 0, n_steps
    EV.replay = list(replay or [])
    EV.data = {"encode": [], "decode": [], "cb": [], "xtrg": [], "mask": [], "occ_dtypes": [], "cn_zero": []}
    FlowState.calls = []


_ORIG = G._ORIG_RANDN


def _randn(*args, **kwargs):
    shape = tuple(args[0] if args else kwargs["shape"])
    fr = sys._getframe(1)
    caller = f"{os.path.basename(fr.f_code.co_filename)}:{fr.f_code.co_name}"
    if EV.replay:
        t = EV.replay.pop(0)
        assert tuple(t.shape) == shape, (t.shape, shape, caller)
        out = t.to(dtype=kwargs.get("dtype") or t.dtype)
    else:
        out = _ORIG(*args, **kwargs)
    EV.draws.append({"frame": EV.frame, "caller": caller, "t": out.detach().clone(), "obj": out})
    EV.log.append(("draw", EV.frame, EV.pas, EV.step, caller))
    return out


def patch_randn():
    n = 0
    for name, mod in list(sys.modules.items()):
        if (name.startswith("diffusers") or name == "rerender_a_video") and \
                getattr(mod, "randn_tensor", None) in (_ORIG, G._recording_randn):
            setattr(mod, "randn_tensor", _randn)
            n += 1
    return n


def cn_hook(module, args, kwargs, output):
    down, mid = output
    EV.data["cn_zero"].append(all(bool((d == 0).all()) for d in down) and bool((mid == 0).all()))


def instrument(pipe, mod):
    """Wrap the pipeline's methods (instance attributes) and the module's helpers to log events."""
    orig_prep = pipe.prepare_latents

    def prepare_latents(*a, **k):
        EV.frame += 1
        EV.pas, EV.step = 0, 0
        EV.log.append(("prepare_latents", EV.frame, 0, 0, ""))
        return orig_prep(*a, **k)
    pipe.prepare_latents = prepare_latents

    enc, dec = pipe.vae.encode, pipe.vae.decode

    def encode(x, *a, **k):
        EV.log.append(("encode", EV.frame, EV.pas, EV.step, ""))
        EV.data["encode"].append((EV.frame, x.detach().clone()))
        return enc(x, *a, **k)

    def decode(z, *a, **k):
        EV.log.append(("decode", EV.frame, EV.pas, EV.step, ""))
        EV.data["decode"].append((EV.frame, EV.pas, z.detach().clone()))
        return dec(z, *a, **k)
    pipe.vae.encode, pipe.vae.decode = encode, decode

    sch = pipe.scheduler
    orig_add = sch.add_noise

    def add_noise(original, noise, timesteps):
        fn = sys._getframe(1).f_code.co_name
        fresh = bool(EV.draws) and noise is EV.draws[-1]["obj"]
        kind = {("prepare_latents", True): "add_noise:init", ("denoising_loop", True): "add_noise:pixel",
                ("denoising_loop", False): "add_noise:shape"}[(fn, fresh)]
        EV.log.append((kind, EV.frame, EV.pas, EV.step, int(timesteps.reshape(-1)[0])))
        if kind == "add_noise:pixel":
            EV.data["xtrg"].append((EV.frame, EV.step, original.detach().clone()))
        return orig_add(original, noise, timesteps)
    sch.add_noise = add_noise

    if getattr(mod, "_golden_instrumented", False):  # module helpers: wrap once for all pipelines
        pipe.controlnet.register_forward_hook(cn_hook, with_kwargs=True)
        return
    mod._golden_instrumented = True
    orig_ffr = mod.find_flat_region

    def find_flat_region(mask):
        EV.log.append(("find_flat_region", EV.frame, EV.pas, EV.step, str(mask.dtype)))
        EV.data["mask"].append((EV.frame, mask.detach().clone()))
        return orig_ffr(mask)
    mod.find_flat_region = find_flat_region

    orig_gwm = mod.get_warped_and_mask

    def get_warped_and_mask(*a, **k):
        out = orig_gwm(*a, **k)
        EV.data["occ_dtypes"].append({"warped": str(out[0].dtype), "bwd_occ": str(out[1].dtype),
                                      "bwd_occ_shape": list(out[1].shape), "bwd_flow": str(out[2].dtype)})
        return out
    mod.get_warped_and_mask = get_warped_and_mask

    pipe.controlnet.register_forward_hook(cn_hook, with_kwargs=True)


def callback(i, t, latents):
    assert i == EV.step, (i, EV.step)
    EV.log.append(("step", EV.frame, EV.pas, EV.step, int(t)))
    EV.data["cb"].append((EV.frame, EV.pas, i, latents.detach().clone()))
    EV.step += 1
    if EV.step == EV.n_steps:
        EV.pas, EV.step = EV.pas + 1, 0


# ---------------------------------------------------------------- helpers
def load_frames(w, h):
    """As golden_crossframe.py loads them, n = START .. START+NF-1."""
    return G.clip_frames(w, h, CLIP, START, NF)


def rust_flows(frames_u8):
    src = os.path.join(CACHE, "rerender_frames.safetensors")
    dst = os.path.join(CACHE, "rerender_flows.safetensors")
    save_file({"frames_u8": frames_u8}, src)
    cmd = ["cargo", "run", "--release", "-q", "-p", "stylizer", "--example", "sd_replay", "--",
           "--part", "flows", "--golden", src, "--out", dst]
    if os.environ.get("RERENDER_FLOWS"):  # debugging only: flows from elsewhere
        dst, cmd = os.environ["RERENDER_FLOWS"], ["RERENDER_FLOWS=" + os.environ["RERENDER_FLOWS"]]
    else:
        subprocess.run(cmd, check=True, cwd=REPO)
    flows = load_file(dst)
    keys = [f"flow.{k}.{d}" for k in ("first", "prev") for d in ("fwd", "bwd")]
    assert sorted(flows) == sorted(keys), sorted(flows)
    for k in keys:
        assert flows[k].dtype == torch.float32 and tuple(flows[k].shape) == (NF, 2, H, W), (k, flows[k].shape)
        assert bool((flows[k][0] == 0).all()), k
    assert torch.equal(flows["flow.first.fwd"][1], flows["flow.prev.fwd"][1])  # both frame 0 -> 1
    return {k: flows[k] for k in keys}, " ".join(cmd)


def expected_signature(f, n_steps, skip_t, warp, mask):
    """The event order the source implies for frame f (kinds only)."""
    def loop(pixel):
        ev = []
        for i in range(n_steps):
            if pixel and mask[0] <= i + skip_t <= mask[1]:
                ev += ["draw:denoising_loop", "add_noise:pixel"]
            if f > 0 and warp[0] <= i + skip_t <= warp[1]:
                ev += ["add_noise:shape"]
            ev += ["step"]
        return ev
    ev = ["prepare_latents", "encode", "draw:sample", "draw:prepare_latents", "add_noise:init"]
    if f == 0:
        return ev + loop(False) + ["decode"]
    ev += loop(False) + ["decode", "encode", "draw:sample", "decode", "encode", "draw:sample", "decode",
                         "find_flat_region"]
    return ev + loop(True) + ["decode"]


def signature(log, f):
    out = []
    for kind, fr, _, _, info in log:
        if fr != f:
            continue
        out.append(f"draw:{info.split(':')[1]}" if kind == "draw" else kind)
    return out


def run_case(pipe, mod, frames, controls, scale, replay=None):
    _reset(pipe_steps(pipe), replay)
    res = pipe(prompt=PROMPT, frames=frames, control_frames=controls, strength=STRENGTH,
               num_inference_steps=STEPS, guidance_scale=GUIDANCE, negative_prompt=NEG, eta=0.0,
               generator=torch.Generator().manual_seed(SEED), output_type="pt",
               controlnet_conditioning_scale=scale, callback=callback, callback_steps=1)
    assert not EV.replay, "unused replay tensors"
    return collect(res.frames, pipe)


def pipe_steps(pipe):
    return min(int(STEPS * STRENGTH), STEPS)


def collect(out_frames, pipe):
    d, n = EV.data, EV.n_steps
    sf = pipe.vae.config.scaling_factor
    dt = d["cb"][0][3].dtype
    h, w = d["cb"][0][3].shape[-2:]
    r = {"image_out": torch.stack([o.float() for o in out_frames]),
         "final_latents": torch.zeros(NF, 4, h, w, dtype=dt), "pass1_latents": torch.zeros(NF, 4, h, w, dtype=dt),
         "blend": torch.zeros(NF, 3, H, W, dtype=dt), "xtrg": torch.zeros(NF, 4, h, w, dtype=dt),
         "mask": torch.zeros(NF, 1, h, w), "shape_fused": torch.zeros(NF, dtype=torch.int64),
         "pixel_fused": torch.zeros(NF, dtype=torch.int64), "fused_steps": {}, "draws": {}, "draw_order": {},
         "decode_vs_latents": []}
    for f in range(NF):
        cbs = [(p, i, lat) for fr, p, i, lat in d["cb"] if fr == f]
        n_pass = 1 if f == 0 else 2
        assert [(p, i) for p, i, _ in cbs] == [(p, i) for p in range(n_pass) for i in range(n)], f
        r["final_latents"][f] = cbs[-1][2][0]
        r["pass1_latents"][f] = cbs[n - 1][2][0]
        decs = [z for fr, p, z in d["decode"] if fr == f]
        encs = [x for fr, x in d["encode"] if fr == f]
        assert len(decs) == (1 if f == 0 else 4) and len(encs) == (1 if f == 0 else 3), (f, len(decs), len(encs))
        # the decoder got latents / sf (first decode of the frame = end of pass 1, last = final)
        r["decode_vs_latents"].append(max(float((decs[0] * sf - r["pass1_latents"][f]).abs().max()),
                                          float((decs[-1] * sf - r["final_latents"][f]).abs().max())))
        shape = {p: [s for k, fr, p_, s, _ in EV.log if k == "add_noise:shape" and fr == f and p_ == p]
                 for p in range(n_pass)}
        pixel = {p: [s for k, fr, p_, s, _ in EV.log if k == "add_noise:pixel" and fr == f and p_ == p]
                 for p in range(n_pass)}
        r["fused_steps"][f] = {"shape": shape, "pixel": pixel}
        r["shape_fused"][f] = sum(len(v) for v in shape.values())
        r["pixel_fused"][f] = sum(len(v) for v in pixel.values())
        dr = [x for x in EV.draws if x["frame"] == f]
        labels = ["noise_vae", "noise_add"]
        callers = ["vae.py:sample", "rerender_a_video.py:prepare_latents"]
        if f > 0:
            labels += ["noise_blend", "noise_blend_rec"] + [f"mask{i}.noise" for i in pixel[1]]
            callers += ["vae.py:sample"] * 2 + ["rerender_a_video.py:denoising_loop"] * len(pixel[1])
        assert [x["caller"] for x in dr] == callers, (f, [x["caller"] for x in dr])
        r["draw_order"][f] = [f"f{f}.{lab} ({c})" for lab, c in zip(labels, callers)]
        for lab, x in zip(labels, dr):
            r["draws"][f"f{f}.{lab}"] = x["t"]
        if f > 0:
            r["blend"][f] = encs[1][0]
            xs = [x for fr, s, x in d["xtrg"] if fr == f]
            assert len(xs) == len(pixel[1]) and all(torch.equal(x, xs[0]) for x in xs), f
            r["xtrg"][f] = xs[0][0]
            ms = [m for fr, m in d["mask"] if fr == f]
            assert len(ms) == 1, f
            r["mask"][f] = ms[0].reshape(1, h, w).float()
    r["log"] = EV.log
    r["all_draws"] = [x["t"] for x in EV.draws]
    r["flow_calls"] = list(FlowState.calls)
    r["occ_dtypes"] = d["occ_dtypes"]
    r["mask_dtypes"] = sorted({str(m.dtype) for _, m in d["mask"]})
    r["controlnet_residuals_all_zero"] = all(d["cn_zero"])
    r["controlnet_calls"] = len(d["cn_zero"])
    return r


def per_frame_max(a, b):
    return [float((a[i].double() - b[i].double()).abs().max()) for i in range(a.shape[0])]


# ---------------------------------------------------------------- main
@torch.no_grad()
def main():
    ref_path, ref_source, ref_sha = obtain_reference()
    raw, frames, ffmpeg_cmd = load_frames(W, H)
    frames_u8 = torch.from_numpy(np.stack([np.asarray(f) for f in frames]))  # [F,H,W,3]
    image_in = frames_u8.permute(0, 3, 1, 2).float() / 255 * 2 - 1
    control_frame = frames_u8.permute(0, 3, 1, 2).float() / 255
    # the committed cross-frame golden used the same frames (its first 3)
    xf = os.path.join(MODELS, "golden", VARIANT, "img2img_crossframe.safetensors")
    same_as_crossframe = None
    if os.path.exists(xf):
        ci = load_file(xf)["image_in"]
        same_as_crossframe = bool(torch.equal(ci, image_in[:ci.shape[0]]))
        assert same_as_crossframe, "frames differ from golden_crossframe.py's"

    flows, cargo_cmd = rust_flows(frames_u8)
    FlowState.frames, FlowState.flows = image_in, flows

    mod, shims = import_reference(ref_path)
    n_patched = patch_randn()
    assert mod.randn_tensor is _randn

    net_dir = os.path.join(MODELS, "controlnet", NET)

    def build(dtype=torch.float32):
        """A fresh pipeline (own modules: the wrappers go on instances) in `dtype`."""
        base = StableDiffusionImg2ImgPipeline.from_pretrained(os.path.join(MODELS, VARIANT), safety_checker=None,
                                                              requires_safety_checker=False)
        net = ControlNetModel.from_pretrained(net_dir, torch_dtype=torch.float32).eval()
        load_url, calls = torch.utils.model_zoo.load_url, []
        torch.utils.model_zoo.load_url = lambda url, **k: calls.append(url) or {}
        try:
            pipe = mod.RerenderAVideoPipeline(
                vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
                controlnet=net, scheduler=DDIMScheduler.from_config(base.scheduler.config, prediction_type="epsilon"),
                safety_checker=None,
                feature_extractor=None, requires_safety_checker=False)
        finally:
            torch.utils.model_zoo.load_url = load_url
        assert len(calls) == 1 and isinstance(pipe.flow_model, FakeGMFlow), calls
        pipe.set_progress_bar_config(disable=True)
        if dtype != torch.float32:
            pipe.to(dtype)
        instrument(pipe, mod)
        return pipe, calls[0]

    pipe, gmflow_url = build()
    x = torch.cat([pipe.image_processor.preprocess(f) for f in frames])
    assert torch.equal(x, image_in), "image_processor.preprocess != RGB/255*2-1"
    controls = [control_frame[f:f + 1].clone() for f in range(NF)]
    # the control image the pipeline builds from our tensor is the tensor itself (CFG: twice)
    ci = pipe.prepare_control_image(controls[1], None, None, 1, 1, "cpu", torch.float32, True, False)
    assert ci.shape[0] == 2 and torch.equal(ci[0], control_frame[1]) and torch.equal(ci[1], control_frame[1])

    # prompt embeddings as the pipeline computes them (negative "" tokenised like any prompt)
    tok, te = pipe.tokenizer, pipe.text_encoder
    neg_ids, pos_ids = tokenize(tok, [NEG]), tokenize(tok, [PROMPT])
    prompt_embeds = torch.cat([te(neg_ids)[0], te(pos_ids)[0]])
    pe_pipe = pipe._encode_prompt(PROMPT, "cpu", 1, True, NEG)
    assert torch.equal(pe_pipe, prompt_embeds)
    pe_none = pipe._encode_prompt(PROMPT, "cpu", 1, True, None)
    neg_none_equal = bool(torch.equal(pe_none, prompt_embeds))

    res = {}
    for case, scale in CASES.items():
        res[case] = run_case(pipe, mod, frames, controls, scale)
        print(f"{case}: {len(res[case]['all_draws'])} draws, flow calls {res[case]['flow_calls']}")
    timesteps = pipe.scheduler.timesteps.clone()
    n_run = pipe_steps(pipe)
    skip_t = int(STEPS * (1 - STRENGTH))
    warp_t, mask_t = (int(0.0 * STEPS), int(0.3 * STEPS)), (int(0.5 * STEPS), int(0.8 * STEPS))
    # maps of the cross-frame attention (up blocks) are keyed by t.item()
    cf = [p for p in pipe.unet.attn_processors.values() if isinstance(p, mod.CrossFrameAttnProcessor)]
    map_keys = sorted(cf[0].first_maps.keys())
    map_dtype = str(cf[0].first_maps[map_keys[0]].dtype)

    # ---- checks
    a, b = res["control"], res["nocontrol"]
    assert len(a["all_draws"]) == len(b["all_draws"]) == 2 + 8 * (NF - 1)
    for x, y in zip(a["all_draws"], b["all_draws"]):
        assert x.shape == y.shape and torch.equal(x, y)
    for f in range(NF):
        assert signature(a["log"], f) == expected_signature(f, n_run, skip_t, warp_t, mask_t), \
            (f, signature(a["log"], f))
        assert signature(b["log"], f) == signature(a["log"], f)
    assert b["controlnet_residuals_all_zero"] and not a["controlnet_residuals_all_zero"]
    assert torch.equal(a["mask"], b["mask"])
    exp_calls = [p for f in range(1, NF) for p in ((0, f), (f - 1, f))]
    assert a["flow_calls"] == exp_calls, a["flow_calls"]
    t_init = [info for k, fr, _, _, info in a["log"] if k == "add_noise:init"]
    assert t_init == [int(timesteps[STEPS - n_run])] * NF, t_init

    # ---- float64 re-run of `control` with the recorded noises
    fp64 = None
    if os.environ.get("RERENDER_FP64", "1") != "0":
        pipe64, _ = build(torch.float64)
        n_upcast = 0
        for m in list(pipe64.unet.modules()) + list(pipe64.controlnet.modules()):
            if isinstance(m, Attention) and m.upcast_attention:
                m.upcast_attention = False
                n_upcast += 1
        r64 = run_case(pipe64, mod, frames, controls, CASES["control"],
                       replay=[t.double() for t in a["all_draws"]])
        assert r64["final_latents"].dtype == torch.float64
        fp64 = {k: stats(a[k], r64[k]) for k in ("final_latents", "image_out", "pass1_latents", "blend", "xtrg")}
        fp64["per_frame_image_out_max_abs"] = per_frame_max(a["image_out"], r64["image_out"])
        fp64["per_frame_final_latents_max_abs"] = per_frame_max(a["final_latents"], r64["final_latents"])
        fp64["mask_equal"] = bool(torch.equal(a["mask"], r64["mask"]))
        fp64["occ_dtypes_fp64_run"] = r64["occ_dtypes"][:2]
        fp64["mask_dtypes_fp64_run"] = r64["mask_dtypes"]
        fp64["note"] = (f"pipeline .to(float64) (fresh ControlNet), recorded noises replayed, same flows; "
                        f"upcast_attention switched off on {n_upcast} Attention modules; the reference's "
                        f"occlusion masks stay float32 (.float()) in this run")
        del pipe64

    # ---- save
    # image_in (= frames_u8/255*2-1, checked) and control_frame (= frames_u8/255) follow from frames_u8;
    # blend and xtrg are in the JSON's statistics only: the file stays small.
    tensors = {"frames_u8": frames_u8,
               "timesteps": timesteps.to(torch.int64), "prompt_embeds": prompt_embeds, "mask": a["mask"]}
    tensors.update(flows)
    tensors.update(a["draws"])
    for case in CASES:
        r = res[case]
        for k in ("final_latents", "image_out", "pass1_latents", "shape_fused", "pixel_fused"):
            tensors[f"{case}.{k}"] = r[k]
    out_dir = os.path.join(OUT, VARIANT)
    os.makedirs(out_dir, exist_ok=True)
    st_path = os.path.join(out_dir, "rerender.safetensors")
    save_file(tensors, st_path)
    os.chmod(st_path, 0o644)

    diffs = {k: per_frame_max(a[k], b[k]) for k in ("final_latents", "image_out", "pass1_latents", "blend", "xtrg")}
    per_frame_stats = {case: [{"image_out_mean": float(res[case]["image_out"][f].mean()),
                               "image_out_std": float(res[case]["image_out"][f].std()),
                               "final_latents_abs_max": float(res[case]["final_latents"][f].abs().max()),
                               "blend_min_max": [float(res[case]["blend"][f].min()),
                                                 float(res[case]["blend"][f].max())],
                               "mask_mean": float(res[case]["mask"][f].mean())} for f in range(NF)]
                       for case in CASES}
    sch = pipe.scheduler
    meta = {
        "file": os.path.relpath(st_path, REPO), "file_bytes": os.path.getsize(st_path),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "diffusers": diffusers.__version__},
        "reference": {"repo": "huggingface/diffusers", "commit": DIFFUSERS_COMMIT, "path": COMMUNITY_PATH,
                      "obtained_from": ref_source, "sha256": ref_sha, "import_shims": shims,
                      "gmflow": f"replaced by a fake returning the Rust flows; load_url({gmflow_url}) -> {{}}"},
        "model_dir": os.path.relpath(os.path.join(MODELS, VARIANT), REPO),
        "controlnet_dir": os.path.relpath(net_dir, REPO),
        "frames": {"clip": os.path.relpath(CLIP, REPO), "frame_numbers": list(range(START, START + NF)),
                   "clip_size_wh": list(raw[0].size), "ffmpeg": ffmpeg_cmd,
                   "resize": f"PIL bicubic to {W}x{H} (aspect not kept)",
                   "first_frames_equal_golden_crossframe_image_in": same_as_crossframe},
        "flows": {"command": cargo_cmd, "function": "stylizer::temporal::rerender::flow_pair (DIS) on "
                  "Gray::from_rgb", "flow_model_calls_per_run": a["flow_calls"],
                  "max_abs": {k: float(v.abs().max()) for k, v in flows.items()}},
        "prompt": PROMPT, "negative_prompt": NEG,
        "negative_prompt_handling": "encode_prompt: isinstance(negative_prompt, str) -> uncond_tokens = [\"\"], "
                                    "tokenised with padding to 77 like any prompt (BOS, EOS, pad); "
                                    f"same embeddings as negative_prompt=None: {neg_none_equal}",
        "params": {"strength": STRENGTH, "num_inference_steps": STEPS, "guidance_scale": GUIDANCE, "seed": SEED,
                   "eta": 0.0, "F": NF, "controlnet_conditioning_scale": CASES, "warp_start": 0.0,
                   "warp_end": 0.3, "mask_start": 0.5, "mask_end": 0.8, "mask_strength": 0.5,
                   "inner_strength": 0.9, "smooth_boundary": True, "output_type": "pt"},
        "schedule": {"timesteps": [int(t) for t in timesteps],
                     "timesteps_run": [int(t) for t in timesteps[STEPS - n_run:]], "steps_run": n_run,
                     "skip_t": skip_t, "warp_t": list(warp_t), "mask_t": list(mask_t),
                     "shape_aware_steps_i": [i for i in range(n_run) if warp_t[0] <= i + skip_t <= warp_t[1]],
                     "pixel_aware_steps_i": [i for i in range(n_run) if mask_t[0] <= i + skip_t <= mask_t[1]],
                     "note": "get_timesteps skips STEPS - int(STEPS*strength) = 2 steps but skip_t = "
                             "int(STEPS*(1-strength)) = int(1.9999999999999996) = 1"},
        "scheduler_class": type(sch).__name__, "scheduler_config": dict(sch.config),
        "prediction_type_note": "tiny-sd2 is v_prediction, but the reference's pred_x0 = (x - sqrt(1-a)*out)/sqrt(a), "
                                "dir_xt = sqrt(1-a_prev)*out and add_noise(pred_x0, out, t) treat the UNet output "
                                "as epsilon regardless (only scheduler.step does v-prediction); the scheduler is "
                                "therefore built with prediction_type epsilon (SD-2-base's and SD 1.5's), so that the "
                                "golden shows the method as written",
        "vae_scaling_factor": pipe.vae.config.scaling_factor, "image_size_wh": [W, H],
        "latent_size_hw": list(a["final_latents"].shape[-2:]),
        "fused_steps_per_frame": {case: {str(f): res[case]["fused_steps"][f] for f in range(NF)} for case in CASES},
        "shape_fused": {case: res[case]["shape_fused"].tolist() for case in CASES},
        "pixel_fused": {case: res[case]["pixel_fused"].tolist() for case in CASES},
        "draw_order_per_frame": {str(f): a["draw_order"][f] for f in range(NF)},
        "draws_per_case": len(a["all_draws"]),
        "draws_identical_between_cases": True,
        "event_order_frame1": signature(a["log"], 1),
        "attention_maps": {"keyed_by": "t.item() (int timestep), set by attn_state.set_timestep in each loop",
                           "keys": map_keys, "dtype": map_dtype,
                           "processors": f"{len(cf)} CrossFrameAttnProcessor (up blocks), others AttnProcessor"},
        "dtypes_observed": {"get_warped_and_mask": a["occ_dtypes"][:2], "find_flat_region_input": a["mask_dtypes"]},
        "controlnet": {"nocontrol_residuals_all_zero": b["controlnet_residuals_all_zero"],
                       "calls_per_case": a["controlnet_calls"]},
        "decode_input_times_sf_vs_callback_latents_max_abs": a["decode_vs_latents"],
        "diff_control_vs_nocontrol_per_frame_max_abs": diffs,
        "per_frame_stats": per_frame_stats,
        "fp64_vs_fp32_control": fp64,
        "shapes": {k: list(v.shape) for k, v in tensors.items()},
        "dtypes": {k: str(v.dtype).replace("torch.", "") for k, v in tensors.items()},
        "randn_tensor_patched_in_modules": n_patched,
    }
    with open(os.path.join(out_dir, "rerender.json"), "w") as fh:
        json.dump(meta, fh, indent=1, default=str)
    print(json.dumps({"file_bytes": meta["file_bytes"], "shape_fused": meta["shape_fused"],
                      "pixel_fused": meta["pixel_fused"], "fused_steps": meta["fused_steps_per_frame"]["control"],
                      "draw_order": meta["draw_order_per_frame"], "diffs": diffs, "per_frame": per_frame_stats,
                      "fp64": None if fp64 is None else {k: fp64[k]["max_abs"] for k in
                                                         ("final_latents", "image_out", "blend")},
                      "attention_map_keys": map_keys, "dtypes_observed": meta["dtypes_observed"],
                      "schedule": meta["schedule"]}, indent=1, default=str))


if __name__ == "__main__":
    main()
