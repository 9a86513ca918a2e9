"""The oracle: a supervised CNN that measures face factors from images (evaluation only).

It plays the part of the paper's external 3D landmarker (Table 2): trained on synthetic
faces with their ground-truth factors, it measures the semantics of GAN generations, which
have no labels. The method itself never uses it.
"""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """conv-BN-ReLU x2, then halve the resolution."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2),
    )


class FactorRegressor(nn.Module):
    """images [B, 3, r, r] in [-1, 1] -> factors [B, F] in factor units.

    Targets are standardised inside (buffers `mean`, `std`), so every factor weighs the same
    in the loss whatever its unit (degrees, colour, strength).
    """

    def __init__(self, n_factors: int, resolution: int, width: int = 32):
        super().__init__()
        blocks, c, r = [], 3, resolution
        while r > 4:  # e.g. 32x32 -> 16x16 -> 8x8 -> 4x4, channels doubling up to 256
            c_out = min(width * 2 ** len(blocks), 256)
            blocks.append(_block(c, c_out))
            c, r = c_out, r // 2
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c * r * r, 256), nn.ReLU(inplace=True), nn.Linear(256, n_factors)
        )
        self.register_buffer("mean", torch.zeros(n_factors))
        self.register_buffer("std", torch.ones(n_factors))
        self.resolution = resolution

    def standardized(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, r, r] -> standardised factor predictions [B, F]."""
        return self.head(self.features(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.standardized(images) * self.std + self.mean


def r2_scores(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Coefficient of determination per column: 1 - SS_res / SS_tot. [N, F] -> [F]."""
    ss_res = ((pred - target) ** 2).sum(0)
    ss_tot = ((target - target.mean(0)) ** 2).sum(0).clamp_min(1e-12)
    return 1.0 - ss_res / ss_tot
