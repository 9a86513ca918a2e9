"""Stage `decompose`: the trained decomposer on every image of latents.zarr -> data/semantics.zarr.

semantics.zarr holds, per latent code (same order and chunks as latents.zarr): `semantics`
[N, 14] (the named univariate semantics: view in degrees / world units, light),
canonical `depth` [N, 1, r, r] (world units) and `albedo` [N, 3, r, r] (in [0, 1]).
Chunk k depends only on chunk k of latents.zarr, so `--prepare`, `--shard i/n`, `--finalize`
reproduce the single-process store (see store.chunked).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from models.decomposition import SEMANTIC_NAMES, Decomposer
from models.resize import resize
from store.artifacts import open_store
from store.chunked import Mode, add_shard_args, run_chunked, shard_mode
from store.datasets import to_unit
from support.device import select_device
from support.params import Params, load_params
from support.recon import load_decomposer

log = logging.getLogger("stages.decompose")


@torch.no_grad()
def decompose_chunk(model: Decomposer, images: np.ndarray, batch: int, device) -> dict[str, np.ndarray]:
    """uint8 images [c, 3, h, w] -> semantics [c, 14], depth [c, 1, r, r], albedo [c, 3, r, r] (float32)."""
    out = {"semantics": [], "depth": [], "albedo": []}
    for b in range(0, len(images), batch):
        x = resize(to_unit(torch.from_numpy(images[b : b + batch])).to(device), model.resolution)
        dec = model(x)
        out["semantics"].append(torch.cat([model.semantic_view(dec.view), dec.light], 1).cpu())
        out["depth"].append(dec.depth[:, None].cpu())
        out["albedo"].append(dec.albedo.cpu())
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def run(params: Params, decomposer: Path, latents: Path, out: Path, mode: Mode = None) -> None:
    """Write semantics.zarr (mode: see store.chunked)."""
    device = select_device(params.device)
    model = load_decomposer(decomposer, device, params.recon.allow_degenerate)
    src = open_store(latents)
    images = src["images"]
    n, chunk, r = images.shape[0], images.chunks[0], model.resolution

    def layout(group) -> None:
        group.create_array(
            "semantics", shape=(n, len(SEMANTIC_NAMES)), chunks=(chunk, len(SEMANTIC_NAMES)), dtype="float32"
        )
        group["semantics"].attrs["columns"] = list(SEMANTIC_NAMES)
        group.create_array("depth", shape=(n, 1, r, r), chunks=(chunk, 1, r, r), dtype="float32")
        group.create_array("albedo", shape=(n, 3, r, r), chunks=(chunk, 3, r, r), dtype="float32")

    def fill(k: int) -> dict[str, np.ndarray]:
        return decompose_chunk(model, images[k * chunk : (k + 1) * chunk], params.recon.eval_batch, device)

    attrs = {
        "resolution": r,
        "latents_params_hash": src.attrs.get("params_hash"),
        "semantic_names": list(SEMANTIC_NAMES),
    }
    run_chunked(
        out,
        "decompose",
        params.recon.model_dump(),
        params.section_hash("recon", "latents", "gan"),
        attrs,
        layout,
        fill,
        n,
        chunk,
        mode,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--decomposer", required=True, help="decomposer.safetensors from train_recon")
    parser.add_argument("--latents", required=True, help="latents.zarr from sample_latents")
    parser.add_argument("--out", required=True)
    add_shard_args(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    run(load_params(args.params), Path(args.decomposer), Path(args.latents), Path(args.out), shard_mode(args))


if __name__ == "__main__":
    main()
