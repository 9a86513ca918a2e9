"""Localized components as pictures: maps of a component, thumbnails, edit grids.

A component u_p [S] of the canonical-map Jacobian is laid out like directions.zarr's
`jacobian` rows: depth [1, r, r] then albedo [3, r, r] (see its `layout` attribute).
"""

from __future__ import annotations

import numpy as np
import torch

from store.images import to_uint8


def split_maps(u: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., 4 r^2] -> depth [..., r, r], albedo [..., 3, r, r]."""
    lead = u.shape[:-1]
    return u[..., : r * r].reshape(*lead, r, r), u[..., r * r :].reshape(*lead, 3, r, r)


def signed_rgb(x: torch.Tensor) -> torch.Tensor:
    """Signed map [..., r, r] -> RGB [..., 3, r, r] in [0, 1]: white at 0, red > 0, blue < 0 (per-map scale)."""
    m = x.abs().flatten(-2).amax(-1).clamp_min(1e-12)[..., None, None]
    t = (x / m).clamp(-1, 1)
    pos, neg = t.clamp_min(0), (-t).clamp_min(0)
    return torch.stack([1 - neg, 1 - pos - neg, 1 - pos], -3)


def albedo_rgb(a: torch.Tensor) -> torch.Tensor:
    """Albedo change [..., 3, r, r] -> RGB in [0, 1] around grey 0.5 (per-map scale)."""
    m = a.abs().flatten(-3).amax(-1).clamp_min(1e-12)[..., None, None, None]
    return 0.5 + 0.5 * a / m


def component_tiles(U: torch.Tensor, r: int) -> np.ndarray:
    """Components U [S, P] -> uint8 tiles [2P, 3, r, r]: per component its depth then albedo change."""
    depth, albedo = split_maps(U.T, r)
    return to_uint8(torch.stack([signed_rgb(depth), albedo_rgb(albedo)], 1).flatten(0, 1))
