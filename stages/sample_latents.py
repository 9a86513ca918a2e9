"""Stage `sample_latents`: z, w = F(z) and G(w) for N codes -> data/latents.zarr.

Sample i of chunk k depends only on (latents.seed, k), so shards reproduce the single-process
store exactly: `--shard i/n` fills chunks k = i, i+n, ... of a store made by `--prepare`,
and `--finalize` checks every chunk is written and seals the store.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from models.resize import resize
from store.chunked import Mode, add_shard_args, run_chunked, shard_mode
from store.images import signed_to_uint8
from support.device import select_device
from support.generators import LatentGenerator, load_generator
from support.params import Params, load_params

log = logging.getLogger("stages.sample_latents")


def sample_chunk(gen: LatentGenerator, params: Params, k: int, device) -> dict[str, np.ndarray]:
    """Chunk k: z [c, z_dim], w [c, w_dim], images uint8 [c, 3, r, r] at `stored_resolution`."""
    lat = params.latents
    lo, hi = k * lat.chunk, min((k + 1) * lat.chunk, lat.n)
    z = torch.randn(hi - lo, gen.z_dim, generator=torch.Generator().manual_seed(lat.seed * 100003 + k))
    ws, images = [], []
    with torch.no_grad():
        for b in range(0, hi - lo, lat.batch_size):
            zb = z[b : b + lat.batch_size].to(device)
            w = gen.mapping(zb, lat.truncation_psi)
            ws.append(w.cpu())
            images.append(signed_to_uint8(resize(gen.synthesis(w), stored_resolution(gen, params))))
    return {"z": z.numpy(), "w": torch.cat(ws).numpy(), "images": np.concatenate(images)}


def stored_resolution(gen: LatentGenerator, params: Params) -> int:
    """Generations are stored at the decomposer's input side (recon.resolution; area
    downsampling, as the paper resized every generation to 64x64), or at the generator's
    own when that is smaller."""
    return min(gen.resolution, params.recon.resolution)


def _layout(gen: LatentGenerator, params: Params):
    lat, r = params.latents, stored_resolution(gen, params)

    def layout(group) -> None:
        group.create_array("z", shape=(lat.n, gen.z_dim), chunks=(lat.chunk, gen.z_dim), dtype="float32")
        group.create_array("w", shape=(lat.n, gen.w_dim), chunks=(lat.chunk, gen.w_dim), dtype="float32")
        group.create_array("images", shape=(lat.n, 3, r, r), chunks=(lat.chunk, 3, r, r), dtype="uint8")

    return layout


def run(params: Params, generator: Path, out: Path, mode: Mode = None) -> None:
    """Write latents.zarr (mode: see store.chunked)."""
    device = select_device(params.device)
    gen = load_generator(generator, device)
    attrs = {
        "generator_kind": gen.kind,
        "generator_params_hash": gen.meta.get("params_hash"),
        "resolution": stored_resolution(gen, params),
        "generator_resolution": gen.resolution,
    }
    run_chunked(
        out,
        "sample_latents",
        params.latents.model_dump(),
        params.section_hash("latents", "gan"),
        attrs,
        _layout(gen, params),
        lambda k: sample_chunk(gen, params, k, device),
        params.latents.n,
        params.latents.chunk,
        mode,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--generator", required=True, help="generator.safetensors from train_gan")
    parser.add_argument("--out", required=True)
    add_shard_args(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    run(load_params(args.params), Path(args.generator), Path(args.out), shard_mode(args))


if __name__ == "__main__":
    main()
