"""Peer methods that find directions in the same W, each from its paper's description.

* GANSpace (Haerkonen et al. 2020): principal components of sampled w; its paper (and code)
  takes them over N = 10^6 samples: ``ganspace_streaming`` accumulates the covariance.
* SeFa (Shen and Zhou 2021), as its reference code's default (genforce/sefa,
  ``factorize_weight`` with ``layer_idx='all'``): the style-affine weights of all modulated
  layers stacked into A [sum C, d], each row (output channel) normalised to unit length, and
  the eigenvectors of A^T A: the directions that change the styles most.
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


def ganspace_streaming(sample_w, n: int, k: int, batch: int = 65536) -> torch.Tensor:
    """First k principal directions [k, d] of n samples drawn by ``sample_w(m) -> w [m, d]``,
    from their covariance accumulated in float64, `batch` at a time (memory O(d^2))."""
    s1, s2, done = None, None, 0
    while done < n:
        w = sample_w(min(batch, n - done)).double()
        s1 = w.sum(0) if s1 is None else s1 + w.sum(0)
        s2 = w.T @ w if s2 is None else s2 + w.T @ w
        done += len(w)
    mean = s1 / done
    cov = s2 / done - torch.outer(mean, mean)
    vals, vecs = torch.linalg.eigh(cov)
    return vecs[:, vals.argsort(descending=True)[:k]].T.float()


def sefa(weights: torch.Tensor | list[torch.Tensor], k: int, normalize: bool = True) -> torch.Tensor:
    """Top-k eigenvectors [k, d] of A^T A, A the modulation weights [C, d] (a list: stacked along C),
    each row scaled to unit norm when `normalize` (SeFa's default)."""
    a = torch.cat(list(weights)) if isinstance(weights, list | tuple) else weights
    a = a.double()
    if normalize:
        a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    vals, vecs = torch.linalg.eigh(a.T @ a)
    return vecs[:, vals.argsort(descending=True)[:k]].T.float()


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
