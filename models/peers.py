"""Peer methods that find directions in the same W, each from its paper's description.

* GANSpace (Haerkonen et al. 2020): principal components of sampled w.
* SeFa (Shen and Zhou 2021): eigenvectors of A^T A, A the weight [C, d] of the first
  modulation (style affine) layer: the directions that change its output most.
* InterFaceGAN (Shen et al. 2020), supervised: per semantic, the normal of a linear
  model of its labels on w (least squares on oracle labels; an upper bound, not unsupervised).

All return unit directions as rows [k, d]. ``best_abs_corr`` scores any set of directions
against measured semantics.
"""

from __future__ import annotations

import torch

from models.linear_semantics import unit


def ganspace(w: torch.Tensor, k: int) -> torch.Tensor:
    """First k principal directions [k, d] of samples w [N, d]."""
    centred = (w - w.mean(0)).double()
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return vh[:k].to(w.dtype)


def sefa(weight: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k eigenvectors [k, d] of A^T A for a modulation weight A [C, d]."""
    vals, vecs = torch.linalg.eigh((weight.T @ weight).double())
    return vecs[:, vals.argsort(descending=True)[:k]].T.to(weight.dtype)


def interfacegan(w: torch.Tensor, labels: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """Per label column, the unit normal [m, d] of a ridge linear fit labels [N, m] ~ w [N, d]."""
    x, y = (w - w.mean(0)).double(), (labels - labels.mean(0)).double()
    gram = x.T @ x
    gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    return unit(torch.linalg.solve(gram, x.T @ y).T).to(w.dtype)


def pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation [k, m] between the columns of x [N, k] and y [N, m] (0 for a constant column)."""
    x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    num = x.T @ y
    den = x.norm(dim=0)[:, None] * y.norm(dim=0)[None, :]
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))


def best_abs_corr(w: torch.Tensor, directions: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """For each semantic column of y [N, m]: the largest |corr(w . u, y)| over directions [k, d] -> [m]."""
    return pearson(w @ directions.T.to(w), y).abs().amax(0)
