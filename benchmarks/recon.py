"""Speed of a 3D-decomposition training step (models/recon_training.py) on CPU, and the renderer's share.

Usage (from the repository root):

    .venv/bin/python benchmarks/recon.py            # table
    .venv/bin/python benchmarks/recon.py --json     # table, then one JSON line last

For the CPU default nets (``DecomposerConfig()``) at 32x32 and at 64x64, with
the mutual reconstruction off (swap_prob 0: 2B images rendered per step) and on
(0.5: 3B), batch ``--batch`` synthetic faces (models.faces, frontal), after
``--warmup`` training steps so that the depth maps look like faces, it reports
the median over ``--repeats`` of

* ``step``: one ``ReconTrainer.step`` (forward, backward, Adam), as images/s;
* ``render``: forward + backward of the same ``render`` call the step makes,
  timed apart on the step's own decomposition (depth, albedo, view and light
  as leaves), and its share of the step.

The default configuration (first row: 32x32, swap_prob 0.5) goes into the
JSON as ``img_per_s`` and ``renderer_share``. Target: renderer < 20 % of the step.
The machine may be shared: the 1-minute load average is printed with the figures.
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

from models import faces  # noqa: E402
from models.decomposition import Decomposer, DecomposerConfig  # noqa: E402
from models.linear_semantics import derangement  # noqa: E402
from models.recon_training import ReconTrainer  # noqa: E402
from models.renderer import render  # noqa: E402

CONFIGS = ((32, 0.5), (32, 0.0), (64, 0.5), (64, 0.0))  # (resolution, swap_prob); the first is the default
TARGET_SHARE = 0.2


def face_images(n, size, seed=0):
    """n synthetic faces [n, 3, size, size] in [-1, 1]."""
    f = faces.sample_factors(n, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        img, _ = faces.render_faces(f, size)
    return img * 2 - 1


def time_render(trainer, images, partner):
    """Seconds of forward + backward of the step's render call, on this batch's decomposition."""
    with torch.no_grad():
        dec = trainer.decomposer(images)
    depth = [dec.depth, dec.depth.flip(2)] + ([dec.depth[partner]] if partner is not None else [])
    albedo = [dec.albedo, dec.albedo.flip(3)] + ([dec.albedo[partner]] if partner is not None else [])
    k = len(depth)
    leaves = [torch.cat(depth), torch.cat(albedo), dec.view.repeat(k, 1), dec.light.repeat(k, 1)]
    leaves = [x.detach().clone().requires_grad_() for x in leaves]
    t0 = time.perf_counter()
    img, mask = render(*leaves, trainer.fov_deg)
    (img * mask).square().mean().backward()
    return time.perf_counter() - t0


def bench(size, swap_prob, batch, warmup, repeats, seed=0):
    pool = face_images(max(64, 4 * batch), size, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed)
    model = Decomposer(DecomposerConfig(resolution=size))
    trainer = ReconTrainer(model, swap_prob=swap_prob)  # Unsup3D defaults: Adam lr 1e-4
    batches = lambda: pool[torch.randint(pool.shape[0], (batch,), generator=gen)]  # noqa: E731
    for _ in range(warmup):
        trainer.step(batches())
    steps, renders = [], []
    for _ in range(repeats):
        x = batches()
        t0 = time.perf_counter()
        trainer.step(x)
        steps.append(time.perf_counter() - t0)
        partner = derangement(batch, gen) if swap_prob > 0 else None
        renders.append(time_render(trainer, x, partner))
    step_s, render_s = statistics.median(steps), statistics.median(renders)
    return {
        "resolution": size,
        "swap_prob": swap_prob,
        "batch": batch,
        "params": sum(p.numel() for p in model.parameters()),
        "step_s": round(step_s, 4),
        "img_per_s": round(batch / step_s, 1),
        "render_fwd_bwd_s": round(render_s, 4),
        "renderer_share": round(render_s / step_s, 3),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=20, help="training steps before timing")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="only the default configuration")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    load0 = os.getloadavg()[0]
    configs = CONFIGS[:1] if args.quick else CONFIGS
    rows = [bench(r, p, args.batch, args.warmup, args.repeats) for r, p in configs]
    load1 = os.getloadavg()[0]

    print(
        f"recon training step: batch {args.batch}, {args.threads} threads, median of {args.repeats} "
        f"after {args.warmup} warm-up steps (load average {load0:.2f} -> {load1:.2f})"
    )
    head = (
        f"{'res':>4} | {'swap':>4} | {'params':>8} | {'step s':>7} | {'img/s':>6} | {'render s':>8} | {'render %':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['resolution']:>4} | {r['swap_prob']:>4} | {r['params']:>8} | {r['step_s']:7.3f} | "
            f"{r['img_per_s']:6.1f} | {r['render_fwd_bwd_s']:8.3f} | {100 * r['renderer_share']:7.1f}%"
        )
    default = rows[0]
    ok = all(r["renderer_share"] < TARGET_SHARE for r in rows)
    print(
        f"target renderer share < {TARGET_SHARE:.0%} of the step: {'met' if ok else 'NOT met'} "
        f"(default config: {default['renderer_share']:.1%})"
    )
    if args.json:
        summary = dict(
            img_per_s=default["img_per_s"],
            renderer_share=default["renderer_share"],
            default={k: default[k] for k in ("resolution", "swap_prob", "batch")},
            rows=rows,
            target_renderer_share=TARGET_SHARE,
            threads=args.threads,
            repeats=args.repeats,
            warmup=args.warmup,
            load_avg=[round(load0, 2), round(load1, 2)],
            torch=torch.__version__,
            machine=platform.machine(),
        )
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
