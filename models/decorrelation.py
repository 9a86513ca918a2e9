"""Decorrelation regularizer on W (Eq. 1 of Zheng et al., CVPR 2021).

For a batch of mapped latents ``w`` [B, d]:

    L = - sum_{i != j} log(1 - |rho_ij|)  +  sum_i (Var[w_i] - mean_j Var[w_j])^2

``rho`` is the batch Pearson correlation matrix of the d dimensions, ``Var``
the batch variance (unbiased, divisor B - 1) of each dimension. Minimising the
first term pushes every pair of dimensions towards zero correlation; the second
one makes all dimensions equally spread.

Normalisation. The paper writes plain sums. With d = 512 the first sum has
d (d - 1) = 261,632 terms, and because a batch of B samples cannot estimate a
correlation better than about 1/sqrt(B), it sits at a noise floor of roughly
d^2 * sqrt(2 / (pi (B - 1))) (about 37,000 for d = 512, B = 32) even for
perfectly independent dimensions; its scale next to the O(1) GAN loss, and so
the weight it needs, would change with d. We therefore default to
``reduction="mean"``: the correlation term is averaged over the d (d - 1)
ordered pairs (about mean |rho| for small rho) and the variance term over the d
dimensions, so both are O(1) and a loss weight transfers across w_dim.
``reduction="sum"`` gives the paper's literal sums. The two are related by
``sum_loss = d (d - 1) * corr_mean + d * var_mean``: a weight lambda on the
paper's sum equals weights lambda d (d - 1) and lambda d on our two mean terms,
i.e. with one weight, "mean" gives the variance term (d - 1) times more
relative weight than "sum" does.

Numerical safety: dimensions are standardised with ``sqrt(var + eps)`` (a dead,
constant dimension gives rho = 0, not NaN), and ``|rho|`` is clamped to
``1 - eps`` before the log, so the value and its gradient stay finite even for
exactly duplicated dimensions (the gradient is then zero for that pair; below
the clamp it is 1 / (1 - |rho|) <= 1 / eps).
"""

from __future__ import annotations

import torch

__all__ = ["correlation_matrix", "decorrelation_loss", "mean_abs_rho"]


def correlation_matrix(w: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of the columns of ``w`` [B, d] over the batch -> [d, d]."""
    if w.ndim != 2 or w.shape[0] < 2:
        raise ValueError(f"w must be [batch >= 2, d], got {list(w.shape)}")
    w = w.float() if w.dtype in (torch.float16, torch.bfloat16) else w
    centered = w - w.mean(dim=0, keepdim=True)  # [B, d]
    var = centered.square().sum(dim=0) / (w.shape[0] - 1)  # [d]
    standardized = centered * (var + eps).rsqrt()  # [B, d]
    return standardized.t() @ standardized / (w.shape[0] - 1)  # [d, d]


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """[d, d] -> [d * (d - 1)] entries with i != j (row-major)."""
    d = m.shape[0]
    # Drop the diagonal by viewing the flattened matrix without its first element
    # as rows of d + 1: each row then starts right after a diagonal entry.
    return m.flatten()[1:].reshape(d - 1, d + 1)[:, :-1].reshape(-1)


def decorrelation_loss(
    w: torch.Tensor,
    reduction: str = "mean",
    eps: float = 1e-6,
    return_terms: bool = False,
):
    """Eq. 1 on a batch of latents ``w`` [B, d] -> scalar (see module doc for ``reduction``).

    ``eps`` bounds |rho| by 1 - eps inside the log. With ``return_terms=True``
    returns ``(loss, correlation_term, variance_term)``.
    """
    if w.ndim != 2 or w.shape[1] < 2:
        raise ValueError(f"w must be [batch, d >= 2], got {list(w.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    rho = correlation_matrix(w)  # [d, d]
    abs_rho = _off_diagonal(rho).abs().clamp(max=1.0 - eps)  # [d (d - 1)]
    pair = -torch.log1p(-abs_rho)  # [d (d - 1)], >= 0
    var = w.float().var(dim=0) if w.dtype in (torch.float16, torch.bfloat16) else w.var(dim=0)  # [d]
    var_dev = (var - var.mean()).square()  # [d]
    if reduction == "mean":
        corr_term, var_term = pair.mean(), var_dev.mean()
    else:
        corr_term, var_term = pair.sum(), var_dev.sum()
    loss = corr_term + var_term
    if return_terms:
        return loss, corr_term, var_term
    return loss


@torch.no_grad()
def mean_abs_rho(w: torch.Tensor) -> torch.Tensor:
    """Mean |rho_ij| over i != j of the batch correlation matrix of ``w`` [B, d] -> 0-dim tensor.

    Note the sampling floor: for independent dimensions its expectation is about
    sqrt(2 / (pi (B - 1))) (0.2 for B = 16, 0.05 for B = 256).
    """
    return _off_diagonal(correlation_matrix(w.detach())).abs().mean()
