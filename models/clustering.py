"""Grouping localized components (paper Fig. 6): Ward linkage on 1 - |cos|, region labels, purity."""

from __future__ import annotations

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform


def cosine_distance(units: torch.Tensor) -> np.ndarray:
    """Directions [K, d] -> distance matrix [K, K] = 1 - |cos| (sign-free: v and -v are one edit)."""
    u = units / units.norm(dim=1, keepdim=True).clamp_min(1e-12)
    dist = (1 - (u @ u.T).abs()).clamp_min(0).double().numpy()
    np.fill_diagonal(dist, 0.0)
    return (dist + dist.T) / 2


def ward_clusters(
    units: torch.Tensor, n_clusters: int = 3, distance: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Ward linkage [K - 1, 4] of the directions and flat labels [K] (1..n): ``n_clusters``
    clusters, or the cut at ``distance`` when given."""
    z = linkage(squareform(cosine_distance(units), checks=False), method="ward")
    if distance is not None:
        return z, fcluster(z, distance, criterion="distance")
    return z, fcluster(z, min(n_clusters, len(units)), criterion="maxclust")


def region_labels(touched: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Each component's region: argmax over regions [R, r, r] of its support overlap; touched [K, r, r].
    -1 for an empty support."""
    overlap = (touched[:, None] & regions[None]).flatten(2).sum(2)  # [K, R]
    return torch.where(touched.flatten(1).any(1), overlap.argmax(1), torch.full_like(overlap[:, 0], -1))


def purity(labels: np.ndarray, truth: np.ndarray) -> float:
    """Clustering purity: sum over clusters of its majority true class count / number of items."""
    total = 0
    for c in np.unique(labels):
        members = truth[labels == c]
        total += np.bincount(members[members >= 0]).max() if (members >= 0).any() else 0
    return total / len(labels)


def region_cosines(units: torch.Tensor, own: np.ndarray) -> tuple[float, float]:
    """Mean |cos| between directions [K, d] of components in the same region (own [K], -1: none)
    and in different regions. Equal means: the directions' geometry carries no region
    signal, so no clustering of them can recover the regions. NaN where no such pair exists."""
    cos = 1 - cosine_distance(units)
    known = own >= 0
    pair = known[:, None] & known[None] & ~np.eye(len(own), dtype=bool)
    same = (own[:, None] == own[None]) & pair
    mean = lambda m: float(cos[m].mean()) if m.any() else float("nan")  # noqa: E731
    return mean(same), mean(pair & ~same)
