"""Speed of the differentiable face renderer (models/renderer.py) on CPU.

Usage (from the repository root):

    .venv/bin/python benchmarks/renderer.py            # table
    .venv/bin/python benchmarks/renderer.py --json     # table, then one JSON line last

Renders a batch (default 128) of 64x64 random smooth faces-like depth maps with
random albedo and light, at yaw 0, 30 and 60 degrees (each image also gets a
random pitch in +-10, roll in +-5 degrees and translations up to 0.03), with
``torch.set_num_threads(2)``, and reports the median over ``--repeats`` runs of

* ``fwd``: ``render(...)`` under ``torch.no_grad()``;
* ``fwd+bwd``: ``render(...)`` with grad on depth, albedo, view and light, then
  backward of a scalar loss.

Baseline, timed in the same run on a smaller batch (``--baseline-batch``) and
scaled linearly to the full batch: a dense fixed-step ray march (every output
ray sampled at ``size`` uniform steps of canonical inverse depth across the
image's depth slab, at most about 1 canonical pixel per step at yaw 60, through
``grid_sample``; first sign change, then a secant interpolation, differentiable
through the two samples). ENVIRONMENT.md quotes a naive vectorized z-buffer
rasterizer at 2-5 s forward and 4-10 s backward for the same 128 x 64x64.
The machine is shared: the 1-minute load average is printed with the figures.
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import renderer as R  # noqa: E402

YAWS = (0, 30, 60)


def face_depth(batch, size, gen):
    """Random smooth faces-like depth maps [batch, size, size] in [0.9, 1.1]."""
    x = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(x, x, indexing="ij")
    d = 1.0 + 0.05 * (xx**2 + yy**2) - 0.06 * torch.exp(-((xx / 0.15) ** 2) - ((yy + 0.05) / 0.35) ** 2)
    d = d.expand(batch, size, size).clone()
    for _ in range(6):
        cx, cy = (torch.rand(2, batch, 1, 1, generator=gen) * 1.6 - 0.8).unbind(0)
        amp = torch.rand(batch, 1, 1, generator=gen) * 0.04 - 0.02
        rad = torch.rand(batch, 1, 1, generator=gen) * 0.35 + 0.15
        d += amp * torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / rad**2)
    return d.clamp(0.9, 1.1)


def make_inputs(batch, size, yaw, seed):
    gen = torch.Generator().manual_seed(seed)
    depth = face_depth(batch, size, gen)
    albedo = torch.rand(batch, 3, size, size, generator=gen)
    u = lambda lo, hi, n=1: torch.rand(batch, n, generator=gen) * (hi - lo) + lo  # noqa: E731
    view = torch.cat([u(-10, 10), torch.full((batch, 1), float(yaw)), u(-5, 5), u(-0.03, 0.03, 3)], 1)
    light = torch.cat([u(0.2, 0.5, 3), u(0.4, 0.8, 3), u(-0.5, 0.5, 2)], 1)
    return depth, albedo, view, light


def dense_march_render(depth, albedo, view, light, fov_deg=10.0, steps=None):
    """Baseline: fixed-step march of every ray through the depth slab (see module doc)."""
    b, h, w = depth.shape
    steps = steps or w
    canon = R.shade(depth, albedo, light, fov_deg)
    au, bu, av, bv, oz, dz = R._rays(view, w, fov_deg)  # u = au + bu / z_canonical, ...
    dmin, dmax = depth.detach().amin((1, 2)), depth.detach().amax((1, 2))
    t = torch.linspace(0, 1, steps, dtype=depth.dtype)
    ws = (1 / dmin)[:, None, None] - ((1 / dmin) - (1 / dmax))[:, None, None] * t  # [B, 1, steps]
    u = au[..., None] + bu[..., None] * ws  # [B, P, steps]
    v = av[..., None] + bv[..., None] * ws
    grid = torch.stack([u, v], -1) * (2 / (w - 1)) - 1
    d = F.grid_sample(depth[:, None], grid, align_corners=True, padding_mode="border")[:, 0]
    fs = ws * d - 1
    inside = (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
    change = ((fs[..., :-1] > 0) != (fs[..., 1:] > 0)) & inside[..., :-1] & inside[..., 1:]
    hit = change.any(-1)
    k = change.to(torch.uint8).argmax(-1, keepdim=True)
    fa, fb = fs.gather(-1, k)[..., 0], fs.gather(-1, k + 1)[..., 0]
    wa, wb = ws.expand_as(fs).gather(-1, k)[..., 0], ws.expand_as(fs).gather(-1, k + 1)[..., 0]
    wh = wa + (wb - wa) * fa / torch.where(hit, fa - fb, torch.ones_like(fa))
    grid = torch.stack([au + bu * wh, av + bv * wh], -1).view(b, h, w, 2) * (2 / (w - 1)) - 1
    img = F.grid_sample(canon, grid, align_corners=True, padding_mode="border")
    mask = hit.view(b, 1, h, w)
    return img * mask, mask.to(img.dtype)


def time_render(fn, inputs, repeats):
    """Median seconds of forward (no grad) and of forward + backward."""

    def fwd():
        with torch.no_grad():
            fn(*inputs)

    def fwd_bwd():
        leaves = [x.detach().clone().requires_grad_() for x in inputs]
        img, mask = fn(*leaves)
        (img * mask).square().mean().backward()

    out = []
    for step in (fwd, fwd_bwd):
        step()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        out.append(statistics.median(times))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline-batch", type=int, default=16, help="0 skips the baseline")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    load0 = os.getloadavg()[0]
    res = {"fwd_s": {}, "fwd_bwd_s": {}, "hit_fraction": {}}
    base = {"fwd_s": {}, "fwd_bwd_s": {}, "mean_abs_diff_vs_renderer": {}}
    for yaw in YAWS:
        inputs = make_inputs(args.batch, args.size, yaw, seed=yaw)
        f, fb = time_render(R.render, inputs, args.repeats)
        res["fwd_s"][str(yaw)], res["fwd_bwd_s"][str(yaw)] = round(f, 4), round(fb, 4)
        with torch.no_grad():
            img, mask = R.render(*inputs)
        res["hit_fraction"][str(yaw)] = round(float(mask.mean()), 4)
        if args.baseline_batch:
            small = [x[: args.baseline_batch] for x in inputs]
            scale = args.batch / args.baseline_batch
            f, fb = time_render(dense_march_render, small, max(1, args.repeats // 2))
            base["fwd_s"][str(yaw)], base["fwd_bwd_s"][str(yaw)] = round(f * scale, 3), round(fb * scale, 3)
            with torch.no_grad():
                bimg, bmask = dense_march_render(*small)
            both = (bmask * mask[: args.baseline_batch]).bool().expand_as(bimg)
            mad = (bimg - img[: args.baseline_batch])[both].abs().mean()
            base["mean_abs_diff_vs_renderer"][str(yaw)] = round(float(mad), 5)
    load1 = os.getloadavg()[0]

    print(
        f"renderer: batch {args.batch}, {args.size}x{args.size}, {args.threads} threads, "
        f"median of {args.repeats} (load average {load0:.2f} -> {load1:.2f})"
    )
    head = f"{'yaw':>4} | {'fwd s':>7} | {'fwd+bwd s':>9} | {'hits':>5}"
    if args.baseline_batch:
        head += f" | {'march fwd s':>11} | {'march fwd+bwd s':>15} | {'speed-up fwd+bwd':>16}"
    print(head)
    print("-" * len(head))
    for yaw in map(str, YAWS):
        row = f"{yaw:>4} | {res['fwd_s'][yaw]:7.3f} | {res['fwd_bwd_s'][yaw]:9.3f} | {res['hit_fraction'][yaw]:5.2f}"
        if args.baseline_batch:
            row += (
                f" | {base['fwd_s'][yaw]:11.2f} | {base['fwd_bwd_s'][yaw]:15.2f}"
                f" | {base['fwd_bwd_s'][yaw] / res['fwd_bwd_s'][yaw]:15.1f}x"
            )
        print(row)
    if args.baseline_batch:
        print(
            f"baseline: dense fixed-step ray march ({args.size} steps), timed at batch {args.baseline_batch} "
            f"and scaled x{args.batch / args.baseline_batch:g}"
        )
    target = 0.25
    worst = max(res["fwd_bwd_s"].values())
    print(f"target fwd+bwd < {target} s at every yaw: {'met' if worst < target else 'NOT met'} (worst {worst:.3f} s)")
    busy = max(load0, load1) > (os.cpu_count() or 2) + 1
    if busy:
        print(
            "warning: other processes were using the CPUs (load average above the core count); with "
            "2 threads each op then waits for a descheduled thread, so these figures can be several "
            "times too slow: repeat on a quiet machine, or compare --threads 1"
        )

    if args.json:
        summary = dict(
            res,
            batch=args.batch,
            size=args.size,
            threads=args.threads,
            repeats=args.repeats,
            target_fwd_bwd_s=target,
            load_avg=[round(load0, 2), round(load1, 2)],
            busy=busy,
            torch=torch.__version__,
            machine=platform.machine(),
        )
        if args.baseline_batch:
            summary["baseline"] = dict(
                base,
                name=f"dense fixed-step ray march, {args.size} steps",
                timed_batch=args.baseline_batch,
                scaled_to_batch=args.batch,
            )
            summary["speedup_fwd_bwd"] = {
                y: round(base["fwd_bwd_s"][y] / res["fwd_bwd_s"][y], 1) for y in base["fwd_bwd_s"]
            }
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
