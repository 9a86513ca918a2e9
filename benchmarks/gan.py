"""Training-step throughput of the StyleGAN2 trainer (models/gan_training.py) on CPU.

Usage (from the repository root):

    .venv/bin/python benchmarks/gan.py            # table
    .venv/bin/python benchmarks/gan.py --json     # table, then one JSON line last

For each config the script times every phase of ``GANTrainer.step`` (G main incl.
the decorrelation loss, G path length, D main, D R1, EMA) with both lazy
regularisers forced on every step (intervals 1), so every phase gets a sample at
every measured step, then reports:

* ``no reg``: G main + D main + EMA per step;
* ``lazy``: the same plus path length / ``pl_interval`` and R1 / ``r1_interval``
  (StyleGAN2's amortised cost, intervals 4 and 16) -- the headline ``img_per_s``;
* ``every step``: all phases every step;
* ``check``: wall-clock img/s of real ``step()`` calls with the normal intervals.

NVlabs' stylegan2-ada-pytorch on this kind of CPU (ENVIRONMENT.md): 28-31 img/s at
32x32 (channel_base 2048, channel_max 128, z = w = 256, batch 16, lazy
regularisation amortised), 18-19 img/s at 64x64 with the same channel rule
(config ``64px-narrow``); ``64px-128ch`` has 128 channels at every resolution.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.gan_training import GANTrainer  # noqa: E402
from models.stylegan2 import Discriminator, Generator, channels_per_resolution  # noqa: E402

CONFIGS = {
    # 32x32: {4: 128, 8: 128, 16: 128, 32: 64}, the config NVlabs' code was measured at.
    "32px-default": dict(resolution=32, channel_base=2048, channel_max=128, z_dim=256, w_dim=256, mapping_layers=8),
    # 64x64 with the same channel rule (32 channels at 64x64): NVlabs measured 18-19 img/s.
    "64px-narrow": dict(resolution=64, channel_base=2048, channel_max=128, z_dim=256, w_dim=256, mapping_layers=8),
    # 64x64 with 128 channels at every resolution.
    "64px-128ch": dict(resolution=64, channel_base=8192, channel_max=128, z_dim=256, w_dim=256, mapping_layers=8),
}
PARTS = ("D_main", "D_r1", "G_main", "G_pl", "ema", "decorr")


def build(cfg: dict, batch: int, seed: int, **trainer_kwargs) -> GANTrainer:
    torch.manual_seed(seed)
    G = Generator(
        cfg["z_dim"], cfg["w_dim"], cfg["mapping_layers"], cfg["resolution"], cfg["channel_base"], cfg["channel_max"]
    )
    D = Discriminator(cfg["resolution"], cfg["channel_base"], cfg["channel_max"])
    return GANTrainer(G, D, batch_size=batch, seed=seed, **trainer_kwargs)


def bench_config(name: str, cfg: dict, batch: int, steps: int, check_steps: int, decorr_weight: float) -> dict:
    res = cfg["resolution"]
    reals = torch.rand(batch, 3, res, res) * 2 - 1
    common = dict(lr=0.0025, r1_gamma=1.0, pl_weight=2.0, decorr_weight=decorr_weight, style_mixing_prob=0.9)

    # Per-phase timings with both regularisers every step.
    tr = build(cfg, batch, 0, r1_interval=1, pl_interval=1, **common)
    tr.step(reals)  # warm-up (allocations, oneDNN kernel selection)
    samples = {p: [] for p in PARTS}
    for _ in range(steps):
        s = tr.step(reals)
        samples["D_main"].append(s["time_D_main"])
        samples["D_r1"].append(s["time_D_r1"])
        samples["G_main"].append(s["time_G_main"] - s["time_decorr"])
        samples["G_pl"].append(s["time_G_pl"])
        samples["ema"].append(s["time_ema"])
        samples["decorr"].append(s["time_decorr"])
    t = {p: statistics.median(v) for p, v in samples.items()}
    pl_interval, r1_interval = 4, 16
    no_reg = t["G_main"] + t["decorr"] + t["D_main"] + t["ema"]
    lazy = no_reg + t["G_pl"] / pl_interval + t["D_r1"] / r1_interval
    every = no_reg + t["G_pl"] + t["D_r1"]
    amortised = {
        "D_main": t["D_main"],
        "D_r1": t["D_r1"] / r1_interval,
        "G_main": t["G_main"],
        "G_pl": t["G_pl"] / pl_interval,
        "ema": t["ema"],
        "decorr": t["decorr"],
    }
    out = {
        "config": dict(
            cfg,
            batch=batch,
            channels=channels_per_resolution(res, cfg["channel_base"], cfg["channel_max"]),
            num_params_G=sum(p.numel() for p in tr.G.parameters()),
            num_params_D=sum(p.numel() for p in tr.D.parameters()),
        ),
        "phase_seconds": t,
        "img_per_s_no_reg": batch / no_reg,
        "img_per_s_lazy": batch / lazy,
        "img_per_s_every_step": batch / every,
        "share_lazy": {p: v / lazy for p, v in amortised.items()},
    }
    del tr

    # Wall-clock check with the real intervals.
    if check_steps > 0:
        tr = build(cfg, batch, 1, r1_interval=r1_interval, pl_interval=pl_interval, **common)
        tr.step(reals)
        t0 = time.perf_counter()
        for _ in range(check_steps):
            tr.step(reals)
        out["img_per_s_check"] = batch * check_steps / (time.perf_counter() - t0)
        out["check_steps"] = check_steps
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="measured steps per config (32x32; 64x64 uses half, min 2)")
    ap.add_argument("--check-steps", type=int, default=16, help="wall-clock steps with real intervals (32x32 only)")
    ap.add_argument("--decorr-weight", type=float, default=1.0)
    ap.add_argument("--only-default", action="store_true", help="skip the 64x64 configs")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
        f"load average (1 min) before start {load:.2f}"
    )
    results = {}
    for name, cfg in CONFIGS.items():
        if args.only_default and name != "32px-default":
            continue
        big = cfg["resolution"] > 32
        steps = max(2, args.steps // 2) if big else args.steps
        check = 0 if big else args.check_steps
        t0 = time.perf_counter()
        results[name] = bench_config(name, cfg, args.batch, steps, check, args.decorr_weight)
        results[name]["bench_seconds"] = time.perf_counter() - t0
        c = results[name]["config"]
        print(
            f"\n[{name}] resolution {c['resolution']}, channels {c['channels']}, z_dim {c['z_dim']}, "
            f"w_dim {c['w_dim']}, mapping layers {c['mapping_layers']}, batch {c['batch']}, "
            f"G {c['num_params_G'] / 1e6:.2f}M params, D {c['num_params_D'] / 1e6:.2f}M params "
            f"({results[name]['bench_seconds']:.0f} s)"
        )

    header = f"{'config':<14} {'no reg':>8} {'lazy':>8} {'every':>8} {'check':>8}   " + " ".join(
        f"{p:>7}" for p in PARTS
    )
    print(f"\nimg/s per full training step (G + D, batch {args.batch}); share of the lazy-amortised step time per part")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        check = f"{r['img_per_s_check']:8.1f}" if "img_per_s_check" in r else f"{'-':>8}"
        shares = " ".join(f"{100 * r['share_lazy'][p]:6.1f}%" for p in PARTS)
        print(
            f"{name:<14} {r['img_per_s_no_reg']:8.1f} {r['img_per_s_lazy']:8.1f} {r['img_per_s_every_step']:8.1f} "
            f"{check}   {shares}"
        )
    print("\nphase seconds (median, when run):")
    for name, r in results.items():
        print(f"  {name}: " + ", ".join(f"{p} {v:.3f}" for p, v in r["phase_seconds"].items()))
    default = results.get("32px-default")
    if default:
        print(
            f"\n32x32 lazy-amortised: {default['img_per_s_lazy']:.1f} img/s "
            f"(NVlabs stylegan2-ada-pytorch reference on this CPU: 28-31 img/s)"
        )
    if "64px-narrow" in results:
        print(
            f"64x64 (same channel rule) lazy-amortised: {results['64px-narrow']['img_per_s_lazy']:.1f} img/s "
            f"(NVlabs reference: 18-19 img/s)"
        )
    if args.json:
        summary = {
            "img_per_s": default["img_per_s_lazy"] if default else None,
            "threads": torch.get_num_threads(),
            "load_average_1min_at_start": load,
            "configs": results,
        }
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
