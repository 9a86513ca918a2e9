"""GAN quality metrics as pure functions: Frechet distance (FID) and perceptual path length (PPL)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import scipy.linalg
import torch


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, D] -> (mean [D], covariance [D, D]) in float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # N < D: singular is expected
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # regularise, as the reference code does
        offset = np.eye(len(sigma1)) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


@torch.no_grad()
def path_length(
    mapping: Callable,
    synthesis: Callable,
    distance: Callable,
    z: torch.Tensor,
    epsilon: float = 1e-4,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PPL in W, 'end' sampling (StyleGAN): d(G(lerp(w0, w1, t)), G(lerp(w0, w1, t + eps))) / eps^2.

    z: [2N, z_dim] pairs (first half, second half). `distance(img_a, img_b) -> [N]` is the
    perceptual distance between images in [-1, 1]. Returns the N per-pair path lengths.
    """
    n = z.shape[0] // 2
    w0, w1 = mapping(z[:n]), mapping(z[n : 2 * n])
    t = torch.rand(n, 1, generator=generator).to(w0)
    wa, wb = torch.lerp(w0, w1, t), torch.lerp(w0, w1, t + epsilon)
    return distance(synthesis(wa), synthesis(wb)) / epsilon**2


def ppl_summary(lengths: torch.Tensor) -> float:
    """StyleGAN's PPL statistic: mean of the lengths between the 1st and 99th percentiles
    (percentiles taken with 'lower' / 'higher' interpolation, so they are actual samples)."""
    lo = torch.quantile(lengths, 0.01, interpolation="lower")
    hi = torch.quantile(lengths, 0.99, interpolation="higher")
    kept = lengths[(lengths >= lo) & (lengths <= hi)]
    return float(kept.mean())
