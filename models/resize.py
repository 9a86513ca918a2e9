"""Resizing images to a network's resolution: one rule for every stage.

Shrinking averages areas (no aliasing: the paper resizes generations to the decomposer's
64x64 this way); enlarging is bilinear (half-pixel centres, align_corners=False).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float images [B, C, h, w] -> [B, C, size, size]; returned as is when already that size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    if images.shape[-1] > size:
        return F.interpolate(images, size=(size, size), mode="area")
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
