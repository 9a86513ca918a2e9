"""Edits along named latent directions (Eq. 4): the grids of `facesem edit`.

A direction is looked up by name in the pipeline's direction stores (directions.zarr: the
14 univariate semantics; components.zarr: the localized components). Every edit goes
through models.linear_semantics.manipulate.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from models.linear_semantics import manipulate
from store.artifacts import open_store
from store.images import signed_to_uint8
from support.generators import LatentGenerator


def load_direction(stores: str | Path | list, name: str) -> tuple[torch.Tensor, float]:
    """Unit direction [d] and sigma_w of the row called `name` in the first of `stores` that has it
    (directions.zarr: the 14 univariate semantics; components.zarr: comp00, comp01, ...)."""
    stores = [stores] if isinstance(stores, (str, Path)) else list(stores)
    seen = []
    for store in stores:
        group = open_store(store)
        rows = list(group["unit"].attrs["rows"])
        if name in rows:
            i = rows.index(name)
            return torch.from_numpy(group["unit"][i]), float(group["sigma_w"][i])
        seen += rows
    raise KeyError(f"direction {name!r} is not in {', '.join(map(str, stores))}; available: {', '.join(seen)}")


MAX_COLUMNS = 256  # scales or seeds of one edit grid (each is a row or column of images)


def parse_scales(text: str) -> list[float]:
    """'-3:3:7' (start:stop:count, inclusive, 1 <= count <= MAX_COLUMNS) or '-2,0,2' -> finite
    scales s of Eq. 4 (at most MAX_COLUMNS).

    Raises ValueError naming the text for anything else (a count out of range, a non-number,
    inf / nan).
    """
    bad = (
        f"--scales must be start:stop:count (1 <= count <= {MAX_COLUMNS}) or a comma list of at most "
        f"{MAX_COLUMNS} finite numbers, got {text!r}"
    )
    try:
        if ":" in text:
            lo, hi, count = text.split(":")
            if not 1 <= int(count) <= MAX_COLUMNS:
                raise ValueError
            values = np.linspace(float(lo), float(hi), int(count)).round(6).tolist()
        else:
            values = [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(bad) from None
    if not np.isfinite(values).all() or len(values) > MAX_COLUMNS:
        raise ValueError(bad)
    return values


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> seeds (integers in [0, 2^63), at most MAX_COLUMNS); raises ValueError naming the
    text otherwise."""
    try:
        seeds = [int(x) for x in text.split(",")]
    except ValueError:
        seeds = None
    if not seeds or min(seeds) < 0 or max(seeds) >= 2**63 or len(seeds) > MAX_COLUMNS:
        raise ValueError(f"--seeds must be a comma list of at most {MAX_COLUMNS} integers in [0, 2^63), got {text!r}")
    return seeds


@torch.no_grad()
def edit_grid(
    gen: LatentGenerator,
    direction: torch.Tensor,
    sigma_w: float,
    seeds: list[int],
    scales: list[float],
    truncation_psi: float = 1.0,
) -> np.ndarray:
    """uint8 images [len(seeds) * len(scales), 3, r, r]: row = seed (z ~ N(0, I) from it), column = s."""
    device = gen.device
    z = torch.cat([torch.randn(1, gen.z_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])
    w = gen.mapping(z.to(device), truncation_psi)  # [n, d]
    s = torch.tensor(scales, device=device)
    w_s = manipulate(w.repeat_interleave(len(scales), 0), direction.to(device), s.repeat(len(seeds)), sigma_w)
    return signed_to_uint8(gen.synthesis(w_s))


@torch.no_grad()
def edit_latents(
    gen: LatentGenerator,
    ws: torch.Tensor,
    direction: torch.Tensor,
    sigma_w: float,
    scales: list[float],
    noise: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Edits of given latents (e.g. projected photos): uint8 [n * (1 + len(scales)), 3, r, r], per
    latent its generation then one column per s of Eq. 4 (the same edit applied to every layer's w
    for ws [n, num_ws, d]; ws [n, d] for W). noise: the projector's noise maps {buffer name: [n, r, r]},
    used for latent i's row (else the generator's constant ones)."""
    device = gen.device
    if noise:  # a copy whose noise maps take each latent's own
        gen = LatentGenerator(copy.deepcopy(gen.net), gen.kind, gen.meta)
    buffers = gen.noise_maps()
    rows = []
    for i in range(len(ws)):
        w = ws[i].to(device)
        w = w[None] if w.ndim == 1 else w  # [num_ws or 1, d]
        batch = torch.stack([w] + [manipulate(w, direction.to(device), s, sigma_w) for s in scales])
        for name, maps in (noise or {}).items():
            buffers[name].copy_(torch.from_numpy(maps[i]))
        rows.append(signed_to_uint8(gen.synthesis(batch if batch.shape[1] > 1 else batch[:, 0])))
    return np.concatenate(rows)
