"""StyleGAN2's projector: the w (and noise maps) whose generation matches a target image.

Karras et al., "Analyzing and Improving the Image Quality of StyleGAN" (CVPR 2020), Sec. 5 and
Appendix D; reference: NVlabs stylegan2-ada-pytorch `projector.py`. Adam on w from the mean w,
with Gaussian noise added to w that fades out over the first `noise_ramp` of the steps, a
learning rate that ramps up linearly then down by a cosine, and the noise maps optimised too
under a multi-scale autocorrelation penalty, renormalised to zero mean / unit variance after
every step. The loss is a perceptual distance (plus an optional pixel MSE).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def learning_rate(t: float, initial_lr: float, rampup: float, rampdown: float) -> float:
    """The rate at progress t in [0, 1]: linear ramp up over `rampup`, cosine down over the last `rampdown`."""
    ramp = min(1.0, (1.0 - t) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    if rampup > 0:
        ramp *= min(1.0, t / rampup)
    return initial_lr * ramp


def w_noise_scale(t: float, w_std: float, initial_noise_factor: float, noise_ramp: float) -> float:
    """Std of the noise added to w at progress t: w_std * factor * max(0, 1 - t / ramp)^2."""
    return w_std * initial_noise_factor * max(0.0, 1.0 - t / noise_ramp) ** 2


def noise_regularization(noise_maps: list[torch.Tensor]) -> torch.Tensor:
    """Sum over maps [r, r] and their 2x average-pooled pyramids (down to 8 px) of the squared
    mean one-pixel autocorrelations along x and y (wrapping): 0 for white noise, large for
    maps that carry image structure."""
    total = torch.zeros(())
    for noise in noise_maps:
        x = noise[None, None]  # [1, 1, r, r]
        while True:
            total = total + (x * x.roll(1, dims=3)).mean().square() + (x * x.roll(1, dims=2)).mean().square()
            if x.shape[2] <= 8:
                break
            x = F.avg_pool2d(x, 2)
    return total


@dataclass
class Projection:
    """ws [num_ws, w_dim] (equal rows for space w), the final image [3, H, W] in [-1, 1], the
    final perceptual distance, and the distance after every step."""

    ws: torch.Tensor
    image: torch.Tensor
    distance: float
    history: list[float]


def project(
    synthesis: Callable[[torch.Tensor], torch.Tensor],
    target: torch.Tensor,
    features: Callable[[torch.Tensor], object],
    distance: Callable[[object, object], torch.Tensor],
    w_avg: torch.Tensor,
    w_std: float,
    num_ws: int,
    noise_maps: list[torch.Tensor],
    *,
    steps: int,
    space: str = "w",
    initial_lr: float = 0.1,
    lr_rampup: float = 0.05,
    lr_rampdown: float = 0.25,
    initial_noise_factor: float = 0.05,
    noise_ramp: float = 0.75,
    noise_regularize: float = 1e5,
    mse_weight: float = 0.0,
    generator: torch.Generator | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> Projection:
    """Find ws with synthesis(ws) close to `target`.

    synthesis: ws [1, num_ws, w_dim] -> images [1, 3, H, W] in [-1, 1], reading `noise_maps`
    (the generator's constant noise maps [r, r], optimised in place when they require grad; an
    empty list for generators without noise). target: [1, 3, H, W] in [-1, 1]. w_avg: [w_dim];
    w_std: the spread of w (sqrt of its summed per-dimension variance). space: "w" optimises one
    w shared by all layers, "w+" one per layer. progress(step, distance) is called every step.
    Raises ValueError for an unknown space or a target of another shape than the generation.
    """
    if space not in ("w", "w+"):
        raise ValueError(f"space must be 'w' or 'w+', got {space!r}")
    rows = num_ws if space == "w+" else 1
    w_opt = w_avg.detach().reshape(1, 1, -1).repeat(1, rows, 1).clone().requires_grad_(True)
    trainable = [m for m in noise_maps if m.requires_grad]
    with torch.no_grad():
        for m in trainable:
            m.copy_(torch.randn(m.shape, generator=generator).to(m.device))
    optimizer = torch.optim.Adam([w_opt, *trainable], betas=(0.9, 0.999), lr=initial_lr)
    with torch.no_grad():
        target_features = features(target)
    history: list[float] = []
    for step in range(steps):
        t = step / steps
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(t, initial_lr, lr_rampup, lr_rampdown)
        scale = w_noise_scale(t, w_std, initial_noise_factor, noise_ramp)
        w_noise = torch.randn(w_opt.shape, generator=generator).to(w_opt.device) * scale
        ws = (w_opt + w_noise).expand(1, num_ws, -1)
        image = synthesis(ws)
        if image.shape != target.shape:
            raise ValueError(f"the target is {list(target.shape)} but the generator makes {list(image.shape)}")
        dist = distance(features(image), target_features).sum()
        loss = dist + noise_regularize * noise_regularization(trainable)
        if mse_weight:
            loss = loss + mse_weight * (image - target).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # keep the noise maps zero-mean, unit-variance (NVlabs)
            for m in trainable:
                m.sub_(m.mean()).mul_(m.square().mean().rsqrt())
        history.append(float(dist.detach()))
        if progress is not None:
            progress(step, history[-1])
    with torch.no_grad():
        ws = w_opt.detach().expand(1, num_ws, -1)
        image = synthesis(ws)
        final = float(distance(features(image), target_features).sum())
    return Projection(ws[0].clone(), image[0], final, history)
