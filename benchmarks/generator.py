"""CPU (or GPU) time per generated image of StyleGAN2 generators at the field's resolutions.

Random weights in the architectures users import (stylegan2-ada-pytorch's `paper256` FFHQ
config, and StyleGAN2 config F at 1024 px), timed on `synthesis(w)` with constant noise after
one warm-up batch; the shipped 32 px generator is the baseline of the same run (ratios are
what to quote: these machines are noisy).

    .venv/bin/python benchmarks/generator.py [--threads N] [--repeats R] [--json]

Prints a table; with --json, ends with one JSON line {"device", "threads", "rows": [{name,
resolution, batch, s_per_image, img_per_s, x_baseline}]}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.stylegan2 import Generator  # noqa: E402
from support.device import select_device  # noqa: E402
from support.generators import load_generator  # noqa: E402

CONFIGS = {  # name: (Generator kwargs, batch)
    "ffhq256 (paper256: cbase 16384, cmax 512, 8 mapping)": (
        dict(z_dim=512, w_dim=512, mapping_layers=8, resolution=256, channel_base=16384, channel_max=512),
        8,
    ),
    "ffhq1024 (config F: cbase 32768, cmax 512, 8 mapping)": (
        dict(z_dim=512, w_dim=512, mapping_layers=8, resolution=1024, channel_base=32768, channel_max=512),
        2,
    ),
}


def seconds_per_image(G, batch: int, repeats: int, device) -> float:
    """Median over `repeats` of (time of synthesis(mapping(z)) on `batch` images) / batch."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(batch, G.z_dim, generator=g).to(device)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            G.synthesis(G.mapping(z), noise_mode="const")
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:  # the first run warms up
                times.append((time.perf_counter() - t0) / batch)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    shipped = load_generator(Path(__file__).resolve().parents[1] / "data/shipped/stylegan2_faces32.safetensors", device)
    rows = [("shipped 32 px (baseline)", shipped.net, 16)]
    for name, (kwargs, batch) in CONFIGS.items():
        torch.manual_seed(0)
        rows.append((name, Generator(**kwargs).to(device).eval(), batch))
    out = []
    for name, G, batch in rows:
        s = seconds_per_image(G, batch, args.repeats, device)
        out.append({"name": name, "resolution": G.resolution, "batch": batch, "s_per_image": round(s, 4)})
    base = out[0]["s_per_image"]
    print(f"device {device}, {args.threads} threads; synthesis(mapping(z)), constant noise, median of {args.repeats}")
    print(f"{'generator':58s} {'px':>5s} {'batch':>5s} {'s/image':>9s} {'img/s':>8s} {'x baseline':>10s}")
    for row in out:
        row["img_per_s"] = round(1 / row["s_per_image"], 2)
        row["x_baseline"] = round(row["s_per_image"] / base, 1)
        print(
            f"{row['name']:58s} {row['resolution']:5d} {row['batch']:5d} {row['s_per_image']:9.4f} "
            f"{row['img_per_s']:8.2f} {row['x_baseline']:10.1f}"
        )
    if args.json:
        print(json.dumps({"device": str(device), "threads": args.threads, "rows": out}))


if __name__ == "__main__":
    main()
