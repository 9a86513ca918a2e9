"""A generator whose semantics are linear in w by construction: G(w) = render(f0 + M w).

The ground-truth counterpart of StyleGAN2 for checking the unsupervised chain: every factor
of the procedural face model (models.faces), the 14 univariate semantics and the localized
ones, is an affine function of w, so the true direction of factor k is row k of M
(normalised). Nothing is trained. With w ~ N(0, I), factor k ~ N(f0_k, scale_k^2): pass the
data's factor means and standard deviations to match the data set's distribution.
"""

from __future__ import annotations

import torch
from torch import nn

from models import faces


class LinearFaceGenerator(nn.Module):
    """G(w) = render(clamp(f0 + M w)) with M = diag(scale) @ D, D [F, w_dim] unit rows.

    Args:
        w_dim: latent size d (z = w: the mapping is the identity).
        f0, scale: [F] factor means and standard deviations, in factor units (degrees, ...).
        resolution: output side in pixels.
        seed: seeds D (random unit directions, nearly orthogonal for d >> 1).
        asymmetry: passed to the face model.
    """

    def __init__(
        self, w_dim: int, f0: torch.Tensor, scale: torch.Tensor, resolution: int, seed: int = 0, asymmetry: float = 1.0
    ):
        super().__init__()
        n_factors = len(faces.FACTOR_NAMES)
        if f0.shape != (n_factors,) or scale.shape != (n_factors,):
            raise ValueError(
                f"f0 and scale must have shape ({n_factors},), got {tuple(f0.shape)} and {tuple(scale.shape)}"
            )
        g = torch.Generator().manual_seed(seed)
        directions = torch.randn(n_factors, w_dim, generator=g)
        directions = directions / directions.norm(dim=1, keepdim=True)
        self.register_buffer("directions", directions)  # [F, d] unit rows: the truth
        self.register_buffer("f0", f0.float().clone())  # [F]
        self.register_buffer("scale", scale.float().clone())  # [F]
        self.z_dim = self.w_dim = w_dim
        self.resolution = resolution
        self.asymmetry = asymmetry

    def mapping(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        """z [B, d] -> w [B, d] (identity, scaled toward 0 by truncation_psi)."""
        return z * truncation_psi

    def factors(self, w: torch.Tensor) -> torch.Tensor:
        """w [B, d] -> factors [B, F] = f0 + M w (before clamping to the valid range)."""
        return self.f0 + (w @ self.directions.T) * self.scale

    def synthesis(self, w: torch.Tensor) -> torch.Tensor:
        """w [B, d] -> images [B, 3, H, W] in [-1, 1]."""
        images, _ = faces.render_faces(self.factors(w), self.resolution, self.asymmetry)
        return images * 2.0 - 1.0

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        return self.synthesis(self.mapping(z, truncation_psi))
