"""`facesem import-gan`: a StyleGAN2 checkpoint from elsewhere -> the pipeline's generator file."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from store.checkpoints import load_weights, save_checkpoint
from store.images import save_grid, signed_to_uint8
from store.stylegan2_formats import read_stylegan2
from support.generators import build_stylegan, load_generator


def import_generator(source: str | Path, out: str | Path, grid: int = 2) -> dict[str, Any]:
    """Convert a StyleGAN2 checkpoint (NVlabs .pkl, rosinality .pt, facesem export; see
    store.stylegan2_formats) into `out`/generator.safetensors + .json (float32, loadable by
    `load_generator` and usable as `gan.init`) and `out`/samples.png (grid x grid, constant
    noise, seeds 0..). Nothing in the file is executed.

    Returns the summary `facesem import-gan --json` prints: format, resolution, z_dim, w_dim,
    num_ws, mapping_layers, channel_base, channel_max, conv_clamp, has_D, weights.
    Raises FileNotFoundError or store.checkpoints.CheckpointError naming the file.
    """
    source, out = Path(source), Path(out)
    imported = read_stylegan2(source)
    G, D = build_stylegan(imported.config)
    load_weights(G, imported.G_ema, source, f"StyleGAN2 G {imported.config}")
    state = {"G_ema": G.state_dict()}
    if imported.D is not None:
        load_weights(D, imported.D, source, f"StyleGAN2 D {imported.config}")
        state["D"] = D.state_dict()
    digest = hashlib.sha256()
    with source.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    meta = {
        "kind": "stylegan2",
        "config": imported.config,
        "init_format": imported.format,
        "imported_from": {"file": source.name, "sha256": digest.hexdigest(), **imported.source},
        "kimg": imported.source.get("kimg"),
    }
    weights = save_checkpoint(out, 0, state, meta, name="generator")
    gen = load_generator(weights)
    with torch.no_grad():
        z = torch.randn(grid * grid, gen.z_dim, generator=torch.Generator().manual_seed(0))
        save_grid(signed_to_uint8(gen.synthesis(gen.mapping(z))), out / "samples.png", ncols=grid)
    return {
        "format": imported.format,
        **{k: imported.config[k] for k in ("resolution", "z_dim", "w_dim", "mapping_layers")},
        "num_ws": G.num_ws,
        **{k: imported.config.get(k) for k in ("channel_base", "channel_max", "conv_clamp")},
        "has_D": imported.D is not None,
        "weights": str(weights),
    }
