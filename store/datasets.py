"""Loading images from artifacts into memory, at the resolution a stage works at."""

from __future__ import annotations

from pathlib import Path

import torch

from models.resize import resize
from store.artifacts import open_store


def resize_uint8(block: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> uint8 [B, 3, r, r] (area filter when shrinking, bilinear else)."""
    if block.shape[-1] == resolution:
        return block
    return resize(block.float(), resolution).round().clamp(0, 255).to(torch.uint8)


def load_images(
    store: str | Path, resolution: int, array: str = "images", chunk: int = 2048
) -> tuple[torch.Tensor, dict]:
    """A store's images -> uint8 [N, 3, r, r] in memory; plus the store's attributes."""
    group = open_store(store)
    images = group[array]
    out = [
        resize_uint8(torch.from_numpy(images[lo : lo + chunk]), resolution) for lo in range(0, images.shape[0], chunk)
    ]
    return torch.cat(out), dict(group.attrs)


def to_unit(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float in [-1, 1]."""
    return images_uint8.float() / 127.5 - 1.0
