"""Training of the 3D decomposition (paper Sec. 3.2 and 3.4): losses, yaw tracking, ``ReconTrainer``.

Per image I (in [-1, 1]) the decomposer predicts depth d, albedo a, view v,
light l and confidences; the renderer re-renders

    I_hat  = R(d, a, v, l)                       reconstruction
    I_flip = R(flip d, flip a, v, l)             symmetric (flipped) reconstruction
    I_mut  = R(d', a', v, l)                     mutual: depth and albedo of I' = I[partner]

``partner`` is a random derangement of the batch (never the image itself).
Photometric loss: Laplacian negative log-likelihood with a predicted sigma,
sqrt(2) |I - I_hat| / sigma + log sigma over channels and valid pixels
(renderer mask of both the reconstruction and the flipped one, eroded by
``erode_px``; the mutual term uses its own mask), divided by the count of *all*
pixels, each invalid pixel counted at a fixed ``invalid_cost``. Unsup3D divides
by the valid count instead; that rewards rendering fewer pixels (the view turns
the face out of the frame and the few pixels left are fit well), a degenerate
optimum that training reached on 2 of 3 seeds of the linear chain. Total:

    (1 - p) (L(I_hat) + flip_weight L(I_flip)) + p L(I_mut),    p = swap_prob

The paper swaps with probability p; we take the *expectation* every step
instead of sampling the branch: the depth, albedo, view and light are computed
anyway, so the mutual term costs one more render (batched with the other two)
and a confidence net, and the gradient has no branch-sampling variance and
every step is deterministic given the seed. With p = 0 the mutual branch is
skipped entirely.

Yaw augmentation (Sec. 3.4, ``YawTracker``): with latents w of the images
known, keep a rolling buffer of (w, predicted yaw); every ``every`` steps
regress v_yaw on pair differences (ridge, the buffer is usually smaller than
d), average the unit estimates with momentum 0.995 (bias-corrected), and add
G(w_s) to the batch, w_s = Eq. 4 of batch latents with s ~ U[-10, 10] (the
paper), capped where the regression's slope predicts a yaw past
``yaw_limit_deg``. The cap matters where the generator does not saturate: the
linear generator turns s = 10 into yaw = 10 data stds, clamped to 90 degrees,
edge-on profiles the view net (+-60 degrees) cannot represent; training on them
collapsed 2 of 2 seeds of the linear chain within 250 steps of the augmentation
start. The cap is computed from the linear slope, so it also limits s on a
StyleGAN, whose yaw saturates by itself before s = 10.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from models.decomposition import Decomposer, Decomposition
from models.linear_semantics import derangement, manipulate, pair_differences, projection_std, regress_directions, unit
from models.recon_metrics import erode
from models.renderer import render
from models.resize import resize
from models.vgg16 import masked_feature_distance


class Reconstructions(NamedTuple):
    """Re-rendered images in [-1, 1] and renderer masks [B, 1, r, r] (1 where a ray hits)."""

    recon: torch.Tensor
    mask: torch.Tensor
    flip: torch.Tensor
    flip_mask: torch.Tensor
    mutual: torch.Tensor | None = None
    mutual_mask: torch.Tensor | None = None


def render_reconstructions(
    dec: Decomposition, partner: torch.Tensor | None = None, fov_deg: float = 10.0
) -> Reconstructions:
    """Render the reconstruction, the flipped one and (``partner`` [B] given) the mutual one.

    One ``render`` call on the stacked batch (2B or 3B images). The flip
    mirrors depth and albedo horizontally and keeps view and light; the mutual
    image b uses depth and albedo of image partner[b] with b's view and light.
    """
    depth, albedo = [dec.depth, dec.depth.flip(2)], [dec.albedo, dec.albedo.flip(3)]
    if partner is not None:
        depth.append(dec.depth[partner])
        albedo.append(dec.albedo[partner])
    k = len(depth)
    image, mask = render(torch.cat(depth), torch.cat(albedo), dec.view.repeat(k, 1), dec.light.repeat(k, 1), fov_deg)
    image = image * 2 - 1
    parts = [t for pair in zip(image.chunk(k), mask.chunk(k)) for t in pair]
    return Reconstructions(*parts)


INVALID_COST = math.sqrt(2)  # NLL of a pixel off by 1 (half the [-1, 1] range) at sigma 1


def photometric_nll(
    recon: torch.Tensor,
    target: torch.Tensor,
    sigma: torch.Tensor,
    mask: torch.Tensor,
    invalid_cost: float = INVALID_COST,
) -> torch.Tensor:
    """Laplacian NLL sqrt(2) |target - recon| / sigma + log sigma per valid pixel and channel,
    ``invalid_cost`` per invalid one, averaged over all of them (a 0-d tensor, nats).

    recon, target [B, C, r, r]; sigma [B, 1, r, r] > 0 (broadcast over channels); mask
    [B, 1, r, r] in {0, 1}. The count is fixed, so losing pixels never lowers the loss
    (module doc); the invalid pixels' constant carries no gradient.
    """
    nll = math.sqrt(2) * (target - recon).abs() / sigma + sigma.log()
    m = mask.expand_as(nll)
    return ((nll * m).sum() + invalid_cost * (1 - m).sum()) / m.numel()


MIRROR_VIEW = (1.0, -1.0, -1.0, -1.0, 1.0, 1.0)  # pitch, yaw, roll, tx, ty, tz of the mirror image
MIRROR_LIGHT = (1.0,) * 6 + (-1.0, 1.0)  # ambient, diffuse, light_x, light_y


def mirror_consistency(
    decomposer: Decomposer, images: torch.Tensor, view: torch.Tensor, light: torch.Tensor
) -> torch.Tensor:
    """Mean |view(flip I) - M view(I)| (in units of each output's range) + |light(flip I) - M light(I)|.

    The mirror image of a face is exactly rendered by the mirrored face under the mirrored view
    (yaw, roll and tx negated) and light (light_x negated), whatever the face's asymmetry, so this
    holds for any image. It keeps the view from drifting to a biased yaw that ignores the input.
    images [B, 3, r, r]; view [B, 6], light [B, 8] of ``decomposer`` on them. A 0-d tensor.
    """
    c = decomposer.config
    scale = view.new_tensor([c.rot_range] * 3 + [c.xy_range] * 2 + [c.z_range])
    flipped = images.flip(3)
    dv = (decomposer.predict_view(flipped) - view * view.new_tensor(MIRROR_VIEW)) / scale
    dl = decomposer.predict_light(flipped) - light * light.new_tensor(MIRROR_LIGHT)
    return dv.abs().mean() + dl.abs().mean()


def reconstruction_losses(
    decomposer: Decomposer,
    images: torch.Tensor,
    *,
    swap_prob: float = 0.0,
    flip_weight: float = 0.5,
    partner: torch.Tensor | None = None,
    erode_px: int = 1,
    fov_deg: float = 10.0,
    invalid_cost: float = INVALID_COST,
    mirror_weight: float = 0.0,
    perceptual: Callable[[torch.Tensor], torch.Tensor] | None = None,
    perceptual_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], Decomposition, Reconstructions]:
    """Loss of one batch images [B, 3, r, r] in [-1, 1] (see module doc).

    ``partner`` [B] (a derangement) is required when swap_prob > 0. ``perceptual``: images
    [n, 3, r, r] -> features [n, C, h, w] (e.g. VGG16 relu3_3, as Unsup3D); with
    ``perceptual_weight`` > 0 the reconstruction and (times flip_weight) the flipped one are
    also compared in that feature space (models.vgg16.masked_feature_distance, Unsup3D's
    perceptual term with a fixed sigma). Raises FloatingPointError when a decomposition output
    is not finite. Returns (total, parts, decomposition, reconstructions); parts: "recon",
    "recon_flip", ("mutual",) ("mirror",) ("perceptual",) "total".
    """
    if swap_prob > 0 and partner is None:
        raise ValueError("swap_prob > 0 needs a partner permutation")
    dec = decomposer(images)
    for name, value in dec._asdict().items():  # the renderer cannot take NaN depth or views
        if not torch.isfinite(value).all():
            raise FloatingPointError(f"non-finite decomposition output '{name}'")
    rec = render_reconstructions(dec, partner if swap_prob > 0 else None, fov_deg)
    mask = erode(rec.mask * rec.flip_mask, erode_px).detach()
    parts = {
        "recon": photometric_nll(rec.recon, images, dec.conf, mask, invalid_cost),
        "recon_flip": photometric_nll(rec.flip, images, dec.conf_flip, mask, invalid_cost),
    }
    own = parts["recon"] + flip_weight * parts["recon_flip"]
    total = own
    if swap_prob > 0:
        sigma = decomposer.mutual_conf(images, images[partner])
        mmask = erode(rec.mutual_mask, erode_px).detach()
        mutual = photometric_nll(rec.mutual, images, sigma, mmask, invalid_cost)
        parts["mutual"] = mutual
        total = (1 - swap_prob) * own + swap_prob * mutual
    if mirror_weight > 0:
        parts["mirror"] = mirror_consistency(decomposer, images, dec.view, dec.light)
        total = total + mirror_weight * parts["mirror"]
    if perceptual_weight > 0:
        if perceptual is None:
            raise ValueError("perceptual_weight > 0 needs a perceptual feature network")
        n = images.shape[0]
        feats = perceptual(torch.cat([images, rec.recon, rec.flip]))
        target = feats[:n].detach()
        parts["perceptual"] = masked_feature_distance(feats[n : 2 * n], target, mask) + flip_weight * (
            masked_feature_distance(feats[2 * n :], target, mask)
        )
        total = total + perceptual_weight * parts["perceptual"]
    parts["total"] = total
    return total, parts, dec, rec


class YawTracker:
    """Estimate of v_yaw in W from a rolling buffer of (w, predicted yaw) (paper Sec. 3.4).

    ``push`` latents w [B, d] with the yaw (degrees) predicted for G(w);
    ``update`` regresses yaw on pair differences of the buffer (relative
    ridge: ``ridge`` x mean diagonal of dW^T dW) and folds the unit estimate
    and its slope (degrees of yaw per unit of w along it) into bias-corrected
    moving averages (``momentum``); ``direction`` is the average (None before
    the first update) and ``sigma_w`` the standard deviation of the buffer's w
    along it. ``extrapolate`` applies Eq. 4.
    """

    def __init__(self, capacity: int = 2048, momentum: float = 0.995, ridge: float = 1e-2, min_samples: int = 64):
        self.capacity, self.momentum, self.ridge, self.min_samples = capacity, momentum, ridge, min_samples
        self.buf_w: torch.Tensor | None = None  # [capacity, d]
        self.buf_y: torch.Tensor | None = None  # [capacity]
        self.size = 0  # filled rows
        self.pos = 0  # next row to write
        self.updates = 0
        self.v_avg: torch.Tensor | None = None  # [d] raw moving average (not bias-corrected)
        self.slope_avg = 0.0  # moving average of ||v|| (deg per unit w), not bias-corrected
        self.sigma_w = 1.0

    def push(self, w: torch.Tensor, yaw: torch.Tensor) -> None:
        w, yaw = w.detach().float(), yaw.detach().float().reshape(-1)
        if self.buf_w is None:
            self.buf_w = w.new_zeros(self.capacity, w.shape[1])
            self.buf_y = w.new_zeros(self.capacity)
        w, yaw = w[-self.capacity :], yaw[-self.capacity :]
        idx = (self.pos + torch.arange(w.shape[0], device=w.device)) % self.capacity
        self.buf_w[idx] = w.to(self.buf_w)
        self.buf_y[idx] = yaw.to(self.buf_y)
        self.pos = int(idx[-1] + 1) % self.capacity
        self.size = min(self.capacity, self.size + w.shape[0])

    @property
    def ready(self) -> bool:
        """Enough samples in the buffer for an update."""
        return self.size >= max(2, self.min_samples)

    def estimate(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One regression estimate of v_yaw from the buffer: [d], degrees of yaw per unit of w."""
        w, y = self.buf_w[: self.size], self.buf_y[: self.size]
        dw, dy = pair_differences(w, y, "random", generator)
        ridge = self.ridge * float((dw.double() ** 2).sum()) / dw.shape[1]
        return regress_directions(dw, dy, ridge)

    def update(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Fold a new estimate into the moving averages; returns the averaged direction [d]."""
        raw = self.estimate(generator)
        v = unit(raw)
        self.v_avg = (
            (1 - self.momentum) * v if self.v_avg is None else self.momentum * self.v_avg + (1 - self.momentum) * v
        )
        self.slope_avg = self.momentum * self.slope_avg + (1 - self.momentum) * float(raw.norm())
        self.updates += 1
        self.sigma_w = float(projection_std(self.buf_w[: self.size], self.direction))
        return self.direction

    @property
    def direction(self) -> torch.Tensor | None:
        """Bias-corrected moving average of the unit estimates [d] (norm <= 1), None before any update."""
        if self.v_avg is None:
            return None
        return self.v_avg / (1 - self.momentum**self.updates)

    @property
    def slope(self) -> float:
        """Bias-corrected moving average of the regression slope, degrees of yaw per unit of w."""
        return self.slope_avg / (1 - self.momentum**self.updates) if self.updates else 0.0

    def max_scale(self, scale: float, limit_deg: float | None) -> float:
        """The largest |s| to extrapolate to: ``scale``, or less where the linear prediction
        slope x s x sigma_w of the yaw would pass ``limit_deg`` (None: no limit)."""
        if limit_deg is None or self.slope * self.sigma_w <= 0:
            return scale
        return min(scale, limit_deg / (self.slope * self.sigma_w))

    def extrapolate(
        self,
        w: torch.Tensor,
        scale: float = 10.0,
        generator: torch.Generator | None = None,
        limit_deg: float | None = None,
    ) -> torch.Tensor:
        """Eq. 4 on w [B, d] with s ~ U[-m, m] per row, m = ``max_scale(scale, limit_deg)``: [B, d]."""
        s = (torch.rand(w.shape[0], generator=generator) * 2 - 1) * self.max_scale(scale, limit_deg)
        return manipulate(w, self.direction.to(w), s.to(w), self.sigma_w)

    def state_dict(self) -> dict:
        out = {
            "size": self.size,
            "pos": self.pos,
            "updates": self.updates,
            "sigma_w": self.sigma_w,
            "slope_avg": self.slope_avg,
        }
        if self.buf_w is not None:
            out.update(buf_w=self.buf_w.clone(), buf_y=self.buf_y.clone())
        if self.v_avg is not None:
            out["v_avg"] = self.v_avg.clone()
        return out

    def load_state_dict(self, state: dict) -> None:
        self.size, self.pos, self.updates = int(state["size"]), int(state["pos"]), int(state["updates"])
        self.sigma_w = float(state["sigma_w"])
        self.slope_avg = float(state.get("slope_avg", 0.0))
        self.buf_w = state["buf_w"].clone() if "buf_w" in state else None
        self.buf_y = state["buf_y"].clone() if "buf_y" in state else None
        self.v_avg = state["v_avg"].clone() if "v_avg" in state else None
        if self.buf_w is not None and self.buf_w.shape[0] != self.capacity:
            raise ValueError(f"buffer capacity {self.buf_w.shape[0]} != {self.capacity}")


class ReconTrainer:
    """Optimises a ``Decomposer`` (Adam, Unsup3D's lr 1e-4 and weight decay 5e-4); no I/O.

    ``step(images, w=None)`` does one update on images [B, 3, r', r'] in
    [-1, 1] (resized to the decomposer's r). With ``yaw_augment`` (needs
    ``generate(w [n, d]) -> images [n, 3, *, *]`` in [-1, 1]) and the batch's
    latents w [B, d], every step pushes (w, predicted yaw) to a ``YawTracker``,
    every ``yaw_every`` steps updates v_yaw, and once v_yaw exists and
    ``yaw_start`` steps are done (a warm-up: early yaw estimates are noise, and
    so would be the direction extrapolated along) each step appends
    round(yaw_fraction B) generations G(w_s) of random batch latents
    extrapolated along v_yaw (s ~ U[-m, m], m = yaw_scale, or less where the
    tracked slope predicts a yaw beyond ``yaw_limit_deg``: ``YawTracker.max_scale``).

    Non-finite inputs, decomposition outputs, losses or gradients raise
    ``FloatingPointError`` naming the culprit before any weight, optimizer or
    yaw-tracker state changes.
    """

    def __init__(
        self,
        decomposer: Decomposer,  # the 3D decomposition network being trained
        *,
        lr: float = 1e-4,  # Adam learning rate (Unsup3D's)
        weight_decay: float = 5e-4,  # Adam weight decay (Unsup3D's)
        betas: tuple[float, float] = (0.9, 0.999),  # Adam betas
        flip_weight: float = 0.5,  # weight of the flipped-face reconstruction (Unsup3D's lambda_f)
        swap_prob: float = 0.0,  # mutual reconstruction: share of the loss on partner-swapped albedo/depth (Sec. 3.2)
        erode_px: int = 1,  # the loss mask is eroded by this many pixels (border artefacts)
        fov_deg: float = 10.0,  # camera field of view, degrees
        generate: Callable[[torch.Tensor], torch.Tensor] | None = None,  # w [n, d] -> G(w) in [-1, 1], for yaw_augment
        yaw_augment: bool = False,  # add generations extrapolated along v_yaw (Sec. 3.4, Eq. 4)
        yaw_every: int = 10,  # steps between updates of the v_yaw estimate
        yaw_momentum: float = 0.995,  # momentum of the v_yaw estimate
        yaw_scale: float = 10.0,  # s ~ U[-yaw_scale, yaw_scale] in stds of w along v_yaw (Eq. 4)
        yaw_fraction: float = 0.5,  # extrapolated generations per step, as a fraction of the batch
        yaw_buffer: int = 2048,  # (w, yaw) pairs the tracker regresses on
        yaw_ridge: float = 1e-2,  # ridge of that regression
        yaw_min_samples: int = 64,  # pairs needed before the first v_yaw estimate
        yaw_start: int = 0,  # warm-up steps before any extrapolation
        seed: int = 0,  # seed of the trainer's CPU random generator (partners, augmentation draws)
        invalid_cost: float = INVALID_COST,  # loss charged per pixel the reconstruction does not cover
        yaw_limit_deg: float | None = None,  # cap s where the tracked slope predicts |yaw| beyond this
        mirror_weight: float = 0.0,  # weight of the mirror consistency of view and light
        perceptual: Callable[[torch.Tensor], torch.Tensor] | None = None,  # images -> features (VGG16 relu3_3)
        perceptual_weight: float = 0.0,  # weight of the perceptual term (Unsup3D: 1); 0 = off
    ):
        if not 0.0 <= swap_prob <= 1.0:
            raise ValueError(f"swap_prob must be in [0, 1], got {swap_prob}")
        if yaw_augment and generate is None:
            raise ValueError("yaw_augment needs a generate(w) callable")
        self.decomposer = decomposer
        self.optimizer = torch.optim.Adam(
            decomposer.parameters(), lr=lr, betas=tuple(float(b) for b in betas), weight_decay=weight_decay
        )
        self.flip_weight, self.swap_prob, self.erode_px = flip_weight, swap_prob, erode_px
        self.invalid_cost, self.mirror_weight = invalid_cost, mirror_weight
        if perceptual_weight > 0 and perceptual is None:
            raise ValueError("perceptual_weight > 0 needs a perceptual feature network")
        self.perceptual, self.perceptual_weight = perceptual, perceptual_weight
        self.fov_deg = fov_deg
        self.generate, self.yaw_augment = generate, yaw_augment
        self.yaw_every, self.yaw_scale, self.yaw_fraction = yaw_every, yaw_scale, yaw_fraction
        self.yaw_start, self.yaw_limit_deg = yaw_start, yaw_limit_deg
        self.yaw = YawTracker(yaw_buffer, yaw_momentum, yaw_ridge, yaw_min_samples)
        self.generator = torch.Generator().manual_seed(seed)  # CPU: derangements, augmentation draws
        self.steps = 0
        self.grad_hook = None  # called with the optimizer before each step (data-parallel averaging)

    @property
    def device(self) -> torch.device:
        return next(self.decomposer.parameters()).device

    def _augment(self, images: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        """Append G(w_s) for yaw-extrapolated batch latents (once v_yaw exists)."""
        if not self.yaw_augment or w is None or self.yaw.direction is None or self.steps < self.yaw_start:
            return images
        n = max(1, round(self.yaw_fraction * w.shape[0]))
        pick = torch.randint(w.shape[0], (n,), generator=self.generator).to(w.device)
        w_s = self.yaw.extrapolate(w[pick], self.yaw_scale, self.generator, self.yaw_limit_deg)
        with torch.no_grad():
            extra = resize(self.generate(w_s).to(images), images.shape[-1])
        return torch.cat([images, extra])

    def losses(self, images: torch.Tensor, partner: torch.Tensor | None = None):
        """``reconstruction_losses`` with this trainer's settings (draws a partner if needed)."""
        if self.swap_prob > 0 and partner is None:
            partner = derangement(images.shape[0], self.generator).to(images.device)
        return reconstruction_losses(
            self.decomposer,
            images,
            swap_prob=self.swap_prob,
            flip_weight=self.flip_weight,
            partner=partner,
            erode_px=self.erode_px,
            fov_deg=self.fov_deg,
            invalid_cost=self.invalid_cost,
            mirror_weight=self.mirror_weight,
            perceptual=self.perceptual,
            perceptual_weight=self.perceptual_weight,
        )

    def step(self, images: torch.Tensor, w: torch.Tensor | None = None) -> dict[str, float]:
        """One optimisation step; returns the loss parts (floats) and "n_augmented"."""
        images = resize(images.to(self.device, torch.float32), self.decomposer.resolution)
        if not torch.isfinite(images).all():
            raise FloatingPointError(f"non-finite input images at step {self.steps}")
        if w is not None:
            w = w.to(self.device, torch.float32)
        batch = self._augment(images, w)
        self.decomposer.train()
        total, parts, dec, _ = self.losses(batch)
        for name, value in parts.items():
            if not torch.isfinite(value):
                raise FloatingPointError(f"non-finite loss '{name}' = {float(value)} at step {self.steps}")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        for name, p in self.decomposer.named_parameters():
            if p.grad is not None and not torch.isfinite(p.grad).all():
                self.optimizer.zero_grad(set_to_none=True)
                raise FloatingPointError(f"non-finite gradient of loss 'total' w.r.t. {name} at step {self.steps}")
        if self.grad_hook is not None:
            self.grad_hook(self.optimizer)  # e.g. average gradients over data-parallel ranks
        self.optimizer.step()
        self.steps += 1
        if self.yaw_augment and w is not None:
            self.yaw.push(w, dec.view[: w.shape[0], 1])
            if self.steps % self.yaw_every == 0 and self.yaw.ready:
                self.yaw.update(self.generator)
        out = {k: float(v.detach()) for k, v in parts.items()}
        out["n_augmented"] = float(batch.shape[0] - images.shape[0])
        return out

    def state_dict(self) -> dict:
        """A snapshot (copied, not aliased) of weights, optimizer, yaw tracker, step counter and RNG state.

        Tensors, numbers and nested dicts / lists only (``torch.load(weights_only=True)`` reads it).
        """
        return copy.deepcopy(
            {
                "decomposer": self.decomposer.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "yaw": self.yaw.state_dict(),
                "steps": self.steps,
                "rng": self.generator.get_state(),
            }
        )

    def reseed(self, seed: int) -> None:
        """Restart the trainer's random stream (derangements, augmentation draws) from ``seed``."""
        self.generator.manual_seed(seed)

    def load_state_dict(self, state: dict) -> None:
        self.decomposer.load_state_dict(state["decomposer"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.yaw.load_state_dict(state["yaw"])
        self.steps = int(state["steps"])
        self.generator.set_state(state["rng"])
