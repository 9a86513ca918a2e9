"""Checkpoints in and out: `facesem import-gan` (a StyleGAN2 from elsewhere -> the pipeline's generator
file) and `facesem export-gan` (the pipeline's generator and directions -> NVlabs names, plain arrays)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from models.stylegan2 import upgrade_legacy_names, with_resample_filters
from store.artifacts import open_store, temporary_path, write_json
from store.checkpoints import CheckpointError, load_checkpoint, load_weights, save_checkpoint
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
    with source.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256")
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


def nvlabs_config(config: dict[str, Any]) -> dict[str, dict]:
    """The stylegan2-ada-pytorch constructor arguments ({"G": ..., "D": ...}) of a facesem config."""
    g = {
        "z_dim": config["z_dim"],
        "c_dim": 0,
        "w_dim": config["w_dim"],
        "img_resolution": config["resolution"],
        "img_channels": 3,
        "mapping_kwargs": {"num_layers": config["mapping_layers"], "lr_multiplier": config.get("mapping_lr_mul", 0.01)},
        "synthesis_kwargs": {
            "channel_base": config["channel_base"],
            "channel_max": config["channel_max"],
            "num_fp16_res": 0,
            "conv_clamp": config.get("conv_clamp"),
        },
    }
    d = {
        "c_dim": 0,
        "img_resolution": config["resolution"],
        "img_channels": 3,
        "channel_base": config.get("d_channel_base", config["channel_base"]),
        "channel_max": config.get("d_channel_max", config["channel_max"]),
        "num_fp16_res": 0,
        "conv_clamp": config.get("d_conv_clamp", config.get("conv_clamp")),
        "epilogue_kwargs": {
            "mbstd_group_size": config.get("mbstd_group", 4),
            "mbstd_num_channels": config.get("mbstd_channels", 1),
        },
    }
    return {"G": g, "D": d}


def _directions(store_path: Path) -> tuple[np.ndarray, dict] | None:
    if not store_path.exists():
        return None
    group = open_store(store_path)
    units = np.asarray(group["unit"][:], dtype=np.float32)  # [k, w_dim], unit rows
    info = {
        "names": list(group["unit"].attrs["rows"]),
        "sigma_w": [float(s) for s in group["sigma_w"][:]],
        "space": "W: one w [w_dim] per image, broadcast to every synthesis layer; edit w + s * sigma_w * v (Eq. 4)",
        "source": str(store_path),
        "params_hash": group.attrs.get("params_hash"),
    }
    return units, info


def export_generator(
    generator: str | Path, out: str | Path, directions: str | Path | None = None, components: str | Path | None = None
) -> dict[str, Any]:
    """Write the pipeline's StyleGAN2 for other tools, into `out`:

    - G_ema.safetensors, D.safetensors: state dicts under NVlabs' key names, with the
      `resample_filter` buffers NVlabs' modules expect (float32);
    - config.json: stylegan2-ada-pytorch's constructor arguments {"G": ..., "D": ...};
    - directions.npy / components.npy: unit vectors [k, w_dim] (float32) and .json with their
      `names`, `sigma_w` and the space, from directions.zarr / components.zarr when given and present.

    Returns {"files": [...], "resolution", "w_dim", "directions", "components"}. Raises
    CheckpointError for a linear generator (it has no StyleGAN2 weights) or an unreadable file.
    """
    generator, out = Path(generator), Path(out)
    state, meta = load_checkpoint(generator)
    if meta.get("kind") != "stylegan2":
        raise CheckpointError(f"{generator}: a {meta.get('kind')!r} generator; only a StyleGAN2 can be exported")
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for part, kind in (("G_ema", "G"), ("D", "D")):
        if part in state:
            weights = with_resample_filters(upgrade_legacy_names({k: v.float() for k, v in state[part].items()}), kind)
            path = out / f"{part}.safetensors"
            tmp = temporary_path(path)
            save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp))
            tmp.replace(path)
            files.append(path.name)
    write_json(out / "config.json", nvlabs_config(meta["config"]))
    files.append("config.json")
    counts = {}
    for name, store_path in (("directions", directions), ("components", components)):
        found = _directions(Path(store_path)) if store_path else None
        counts[name] = 0 if found is None else len(found[0])
        if found is not None:
            np.save(out / f"{name}.npy", found[0])
            write_json(out / f"{name}.json", found[1])
            files += [f"{name}.npy", f"{name}.json"]
    return {"files": files, "resolution": meta["config"]["resolution"], "w_dim": meta["config"]["w_dim"], **counts}
