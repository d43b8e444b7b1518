#!/usr/bin/env python3
"""Our SD UNet and VAE next to PyTorch's, in one invocation, on the same machine state.

Runs bench_torch.py's `unet` and `vae` cases (SD-2-base UNet at latent 60x106, CFG batch 2
and batch 1; SD VAE decode 60x106 -> 480x848 and encode) and then the project's
`sd_bench` example on the same random-weight SD-2-base pipeline (make_sd2_random.py), and
prints ours/PyTorch ratios (best of the repetitions) and peak memory.

Usage: python bench_sd_compare.py MODEL_DIR [--reps 1] [--bench-bin target/release/examples/sd_bench]
                                  [--rust-args "--vae-tiling off"]
Build first: cargo build --release --example sd_bench
"""
import argparse
import json
import os
import shlex
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def result_line(out):
    lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
    return json.loads(lines[-1][7:]) if lines else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--bench-bin", default=os.path.join(ROOT, "target", "release", "examples", "sd_bench"))
    ap.add_argument("--rust-args", default="")
    ap.add_argument("--controlnet", action="store_true",
                    help="only the ControlNet step: MODEL_DIR/controlnet beside the UNet, one CFG step each side")
    ap.add_argument("--tiny-vae", metavar="DIR",
                    help="only TAESD: the diffusers folder DIR (tests/fixtures/sd/taesd) vs AutoencoderTiny()")
    a = ap.parse_args()
    if a.controlnet:
        return controlnet(a)
    if a.tiny_vae:
        return tiny_vae(a)

    torch_out = os.path.join(HERE, ".cache", "bench_sd_compare_torch.json")
    load0 = os.getloadavg()
    subprocess.run([sys.executable, os.path.join(HERE, "bench_torch.py"), "unet,vae", "--reps", str(a.reps),
                    "--out", torch_out], check=True)
    with open(torch_out) as f:
        t = json.load(f)
    cmd = [a.bench_bin, "--model", a.model, "--cases", "unet,vae", "--reps", str(a.reps)] + shlex.split(a.rust_args)
    p = subprocess.run(cmd, capture_output=True, text=True)
    r = result_line(p.stdout)
    if r is None:
        sys.exit(f"sd_bench failed:\n{p.stderr[-3000:]}")
    load1 = os.getloadavg()

    rows = [
        ("UNet 60x106 batch 2 (CFG)", min(t["unet"]["batch2_s"]), min(r["unet"]["batch2_s"])),
        ("UNet 60x106 batch 1", min(t["unet"]["batch1_s"]), min(r["unet"]["batch1_s"])),
        ("VAE decode 60x106 -> 480x848", min(t["vae"]["decode_s"]), min(r["vae"]["decode_s"])),
        ("VAE encode 480x848", min(t["vae"]["encode_s"]), min(r["vae"]["encode_s"])),
    ]
    print(f"\n{'case':32} {'PyTorch s':>10} {'ours s':>10} {'ours/PyTorch':>13}")
    for name, ts, rs in rows:
        print(f"{name:32} {ts:10.2f} {rs:10.2f} {rs / ts:13.2f}")
    # CPU seconds (process user+system) in the same order for both: unet b2, b1; vae decode, encode.
    if "cpu_s" in t["unet"] and "cpu_s" in r["unet"]:
        r_cpu = r["unet"]["cpu_s"] + r["vae"]["cpu_s"]
        t_cpu = t["unet"]["cpu_s"] + t["vae"]["cpu_s"]
        n = a.reps
        pick = lambda v, i: min(v[i * n:(i + 1) * n])  # noqa: E731
        print(f"\n{'case (CPU seconds)':32} {'PyTorch':>10} {'ours':>10} {'ours/PyTorch':>13}")
        for i, (name, _, _) in enumerate(rows):
            print(f"{name:32} {pick(t_cpu, i):10.1f} {pick(r_cpu, i):10.1f} {pick(r_cpu, i) / pick(t_cpu, i):13.2f}")
    print(f"peak RSS MB  unet: PyTorch {t['unet']['peak_rss_MB']}  ours {r['unet']['peak_rss_MB']:.0f} | "
          f"vae: PyTorch {t['vae']['peak_rss_MB']}  ours {r['vae']['peak_rss_MB']:.0f}")
    print(f"threads: PyTorch {t['unet']['threads']}, ours {r['threads']}; ours: tiling {r['vae_tiling']}, "
          f"slicing {r['slicing']}; load average before/after {[round(x, 1) for x in load0]} / "
          f"{[round(x, 1) for x in load1]}")
    print("RESULT " + json.dumps({"torch": {k: t[k] for k in ("unet", "vae")}, "ours": r}))


def tiny_vae(a):
    torch_out = os.path.join(HERE, ".cache", "bench_sd_compare_vae_tiny.json")
    subprocess.run([sys.executable, os.path.join(HERE, "bench_torch.py"), "vae_tiny,vae", "--reps", str(a.reps),
                    "--out", torch_out], check=True)
    with open(torch_out) as f:
        t = json.load(f)
    rows = []
    for label, extra in [("TAESD", ["--tiny-vae", a.tiny_vae]), ("SD VAE", [])]:
        cmd = [a.bench_bin, "--model", a.model, "--cases", "vae", "--reps", str(a.reps)] + extra + shlex.split(a.rust_args)
        p = subprocess.run(cmd, capture_output=True, text=True)
        r = result_line(p.stdout)
        if r is None:
            sys.exit(f"sd_bench failed:\n{p.stderr[-3000:]}")
        rows.append((label, t["vae_tiny" if label == "TAESD" else "vae"], r["vae"]))
    print(f"\n{'case (480x848)':24} {'PyTorch s':>10} {'ours s':>10} {'ours/PyTorch':>13}")
    for label, tt, rr in rows:
        for k in ("encode_s", "decode_s"):
            print(f"{label + ' ' + k[:-2]:24} {min(tt[k]):10.3f} {min(rr[k]):10.3f} {min(rr[k]) / min(tt[k]):13.2f}")
    print(f"peak RSS MB: PyTorch TAESD {t['vae_tiny']['peak_rss_MB']}  ours (with the UNet loaded) "
          f"{rows[0][2]['peak_rss_MB']:.0f}")
    print("RESULT " + json.dumps({"torch": {k: t[k] for k in ("vae_tiny", "vae")}, "ours": [r for _, _, r in rows]}))


def controlnet(a):
    torch_out = os.path.join(HERE, ".cache", "bench_sd_compare_controlnet.json")
    load0 = os.getloadavg()
    subprocess.run([sys.executable, os.path.join(HERE, "bench_torch.py"), "controlnet", "--reps", str(a.reps),
                    "--out", torch_out], check=True)
    with open(torch_out) as f:
        t = json.load(f)["controlnet"]
    cmd = [a.bench_bin, "--model", a.model, "--cases", "controlnet", "--controlnet",
           os.path.join(a.model, "controlnet"), "--reps", str(a.reps)] + shlex.split(a.rust_args)
    p = subprocess.run(cmd, capture_output=True, text=True)
    r = result_line(p.stdout)
    if r is None:
        sys.exit(f"sd_bench failed:\n{p.stderr[-3000:]}")
    r = r["controlnet"]
    load1 = os.getloadavg()
    h, w = t["latent_hw"]
    print(f"\n{'case (latent %dx%d, CFG batch 2)' % (h, w):36} {'PyTorch s':>10} {'ours s':>10} {'ours/PyTorch':>13}")
    for name, k in [("ControlNet + UNet step", "step_s"), ("UNet step alone", "unet_alone_s"),
                    ("ControlNet alone", "net_alone_s")]:
        ts, rs = min(t[k]), min(r[k])
        print(f"{name:36} {ts:10.2f} {rs:10.2f} {rs / ts:13.2f}")
    print(f"peak RSS MB: PyTorch {t['peak_rss_MB']}  ours {r['peak_rss_MB']:.0f}  "
          f"(ControlNet {t['controlnet_params_M']} M parameters)")
    print(f"load average before/after {[round(x, 1) for x in load0]} / {[round(x, 1) for x in load1]}")
    print("RESULT " + json.dumps({"torch": t, "ours": r}))


if __name__ == "__main__":
    main()
