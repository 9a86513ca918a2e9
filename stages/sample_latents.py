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
from tqdm import tqdm

from pipeline.artifacts import create_store, mark_complete, write_store
from pipeline.device import select_device
from pipeline.generators import LatentGenerator, load_generator
from pipeline.images import to_uint8
from pipeline.params import Params, load_params

log = logging.getLogger("stages.sample_latents")


def sample_chunk(gen: LatentGenerator, params: Params, k: int, device) -> dict[str, np.ndarray]:
    """Chunk k: z [c, z_dim], w [c, w_dim], images uint8 [c, 3, r, r]."""
    lat = params.latents
    lo, hi = k * lat.chunk, min((k + 1) * lat.chunk, lat.n)
    z = torch.randn(hi - lo, gen.z_dim, generator=torch.Generator().manual_seed(lat.seed * 100003 + k))
    ws, images = [], []
    with torch.no_grad():
        for b in range(0, hi - lo, lat.batch_size):
            zb = z[b:b + lat.batch_size].to(device)
            w = gen.mapping(zb, lat.truncation_psi)
            ws.append(w.cpu())
            images.append(to_uint8(gen.synthesis(w).clamp(-1, 1) * 0.5 + 0.5))
    return {"z": z.numpy(), "w": torch.cat(ws).numpy(), "images": np.concatenate(images)}


def _layout(group, gen: LatentGenerator, params: Params) -> None:
    lat, r = params.latents, gen.resolution
    group.create_array("z", shape=(lat.n, gen.z_dim), chunks=(lat.chunk, gen.z_dim), dtype="float32")
    group.create_array("w", shape=(lat.n, gen.w_dim), chunks=(lat.chunk, gen.w_dim), dtype="float32")
    group.create_array("images", shape=(lat.n, 3, r, r), chunks=(lat.chunk, 3, r, r), dtype="uint8")
    group.create_array("written", shape=(n_chunks(params),), dtype="bool", fill_value=False)


def n_chunks(params: Params) -> int:
    return -(-params.latents.n // params.latents.chunk)


def _fill(group, gen, params, chunks, device) -> None:
    lat = params.latents
    for k in tqdm(chunks, desc="sample_latents", unit="chunk"):
        data = sample_chunk(gen, params, k, device)
        lo = k * lat.chunk
        for name, arr in data.items():
            group[name][lo:lo + len(arr)] = arr
        group["written"][k] = True


def _attrs(gen: LatentGenerator, params: Params) -> dict:
    return {"generator_kind": gen.kind, "generator_params_hash": gen.meta.get("params_hash"),
            "resolution": gen.resolution}


def run(params: Params, generator: Path, out: Path, shard: tuple[int, int] | None = None,
        prepare: bool = False, finalize: bool = False) -> None:
    device = select_device(params.device)
    gen = load_generator(generator, device)
    section = params.latents.model_dump()
    phash = params.section_hash("latents", "gan")
    if prepare:
        _layout(create_store(out, "sample_latents", section, phash, **_attrs(gen, params)), gen, params)
    elif finalize:
        import zarr
        missing = np.flatnonzero(~zarr.open_group(str(out), mode="r")["written"][:])
        if missing.size:
            raise RuntimeError(f"{out}: chunks {missing.tolist()} were not written; run their shards")
        mark_complete(out)
    elif shard is not None:
        import zarr
        i, n = shard
        _fill(zarr.open_group(str(out), mode="r+"), gen, params, range(i, n_chunks(params), n), device)
    else:
        with write_store(out, "sample_latents", section, phash, **_attrs(gen, params)) as group:
            _layout(group, gen, params)
            _fill(group, gen, params, range(n_chunks(params)), device)


def _shard(text: str) -> tuple[int, int]:
    i, n = (int(x) for x in text.split("/"))
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard must be i/n with 0 <= i < n, got {text!r}")
    return i, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--generator", required=True, help="generator.safetensors from train_gan")
    parser.add_argument("--out", required=True)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--shard", type=_shard, help="i/n: write chunks i, i+n, ... of a prepared store")
    mode.add_argument("--prepare", action="store_true", help="create the empty (incomplete) store")
    mode.add_argument("--finalize", action="store_true", help="check all chunks, mark complete")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    run(load_params(args.params), Path(args.generator), Path(args.out), args.shard, args.prepare,
        args.finalize)


if __name__ == "__main__":
    main()
