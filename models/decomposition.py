"""Unsup3D's photo-geometric autoencoder: the nets that decompose a face image.

An image I [B, 3, r, r] in [-1, 1] is decomposed into a canonical depth map, a
canonical albedo, a view and a light (the paper's 6 + 8 = 14 univariate
semantics), plus per-pixel confidences for the photometric loss. Rendering the
parts with ``models.renderer.render`` reconstructs I (see models.recon_training).

Nets (Wu et al., CVPR 2020, at a configurable resolution r = 2^k >= 16; the
paper uses 64, the CPU default is 32):

* ``MapNet``: encoder-decoder, image -> map (depth: 1 channel, albedo: 3);
* ``Encoder``: image -> vector (view: 6, light: 8);
* ``ConfidenceNet``: image(s) -> per-pixel sigma > 0 (softplus + eps), with
  ``in_channels`` 3 (I -> sigma of the reconstruction and of the flipped one)
  or 6 (cat(I, I') -> sigma of the mutual reconstruction, paper Sec. 3.2).

Widths are constructor arguments: ``DecomposerConfig.unsup3d()`` is the
paper's size (13M parameters per map net at 64x64, 45M in all), the default
a small CPU configuration (0.7M in all at 32x32).

Two departures from Unsup3D, both about the convex / concave ("hollow face")
ambiguity: under a near-orthographic camera (fov 10 degrees) inverting the
relief, negating yaw and pitch and mirroring the light direction explains an
image almost equally well, and which solution training falls into depends on
the random init (measured: 3 of 7 seeds hollow at 200 steps on synthetic
faces). (1) ``depth_prior``: a fixed ellipsoidal bump added to the raw depth
before the tanh (default 1.0, 0 = Unsup3D) tilts the start towards a convex
face; the nets can override it. At 0.5 the relief of 2 of 3 seeds on the default chain
flattened into a sheet turned by a growing yaw (at steps 1000 and 2000); at 1.0 none did
(README, "Over seeds"). (2) The view and light encoders' last layer
starts at zero (frontal view, frontal even light), so their random init
carries no yaw or light sign. With both, 7 of 7 seeds learnt a convex face.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn

from models.renderer import LIGHT_NAMES, VIEW_NAMES, rotation_matrix

SEMANTIC_NAMES = VIEW_NAMES + LIGHT_NAMES  # the 14 univariate semantics, in ``semantics()`` order


def rotation_shift(view: torch.Tensor) -> torch.Tensor:
    """R z - z [B, 3] of views [B, 6] (VIEW_NAMES; R as models.renderer.rotation_matrix): where a
    unit step along the canonical z goes, less the step itself."""
    rz = rotation_matrix(view[:, 0], view[:, 1], view[:, 2])[:, :, 2]
    return rz - rz.new_tensor([0.0, 0.0, 1.0])


def repivot(view: torch.Tensor, offset: float) -> torch.Tensor:
    """The view [B, 6] (VIEW_NAMES) re-expressed for the canonical depth moved ``offset`` world
    units away from the camera: translations T - offset (R z - z), rotations unchanged.

    The depth's level and the translation are one ambiguity of Unsup3D's image formation
    (models.renderer: P' = R (P - c0) + c0 + T): depth + offset seen with translation
    T - offset R z renders the image of depth seen with T (exactly for an orthographic camera;
    at the renderer's 10 degrees the face also scales by (depth + offset) / depth). Only the
    rotation-dependent part is applied here (the rest, -offset along z, is the same for every
    image). Pure.
    """
    return torch.cat([view[:, :3], view[:, 3:] - offset * rotation_shift(view)], 1)


def fit_pivot(view: torch.Tensor) -> float:
    """The depth offset (world units) whose ``repivot`` leaves the image-plane translation (tx, ty)
    of views [N, 6] uncorrelated with the rotation's own shift (R z - z)_xy: least squares,
    pooled over x and y. 0.0 when the views do not rotate.

    Why: the decomposer's canonical depth level is a convention (tanh range, per-image mean), not
    the generator's pivot, so its tx absorbs k sin(yaw) and its ty k sin(pitch) (measured on the
    default run's ground-truth faces: tx's estimate had r 0.79 with yaw and 0.32 with tx). Assuming
    the data's translation does not depend on its rotation picks the one offset that removes it
    (there: 0.028, against 0.026 between the true and the estimated face depth; tx's r rose to
    0.66). An assumption of facesem, not the paper's.
    """
    v = view.double()
    a = rotation_shift(v)[:, :2]
    a, t = a - a.mean(0), v[:, 3:5] - v[:, 3:5].mean(0)
    den = float((a * a).sum())
    return float((a * t).sum()) / den if den > 1e-12 else 0.0


def _norm(c: int) -> nn.GroupNorm:
    """GroupNorm with 4 channels per group (Unsup3D: 16 groups of 64)."""
    return nn.GroupNorm(max(1, c // 4), c)


def _levels(resolution: int) -> int:
    """Number of stride-2 stages from r x r down to 4x4."""
    k = int(round(math.log2(resolution)))
    if resolution < 16 or 2**k != resolution:
        raise ValueError(f"resolution must be a power of 2 >= 16, got {resolution}")
    return k - 2


def _widths(nf: int, levels: int) -> list[int]:
    """Channels after each stride-2 stage: nf, 2nf, 4nf, 8nf, 8nf, ..."""
    return [nf * 2 ** min(i, 3) for i in range(levels)]


def _down(c_in: int, widths: list[int], norm: bool) -> list[nn.Module]:
    """Stride-2 4x4 convs, r x r -> 4x4 (no norm on the last one, as Unsup3D)."""
    layers = []
    for i, c in enumerate(widths):
        layers.append(nn.Conv2d(c_in, c, 4, 2, 1, bias=False))  # s x s -> s/2 x s/2, s = r / 2^i
        if norm and i < len(widths) - 1:
            layers.append(_norm(c))
        layers.append(nn.LeakyReLU(0.2, inplace=True) if norm else nn.ReLU(inplace=True))
        c_in = c
    return layers


class Encoder(nn.Module):
    """Image [B, c_in, r, r] -> tanh vector [B, c_out] in (-1, 1) (view or light)."""

    def __init__(self, c_in: int, c_out: int, resolution: int = 32, nf: int = 16):
        super().__init__()
        widths = _widths(nf, _levels(resolution))
        self.net = nn.Sequential(
            *_down(c_in, widths, norm=False),  # r x r -> 4x4
            nn.Conv2d(widths[-1], widths[-1], 4, 1, 0, bias=False),  # 4x4 -> 1x1
            nn.ReLU(inplace=True),
            nn.Conv2d(widths[-1], c_out, 1, 1, 0, bias=False),  # 1x1
            nn.Tanh(),
        )
        nn.init.zeros_(self.net[-2].weight)  # start at 0 (frontal view, even light): no random sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


def _bottleneck(width: int, zdim: int) -> list[nn.Module]:
    """4x4 features -> a zdim code (1x1) -> 4x4 features, as Unsup3D's encoder-decoders."""
    return [
        nn.Conv2d(width, zdim, 4, 1, 0, bias=False),  # 4x4 -> 1x1
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(zdim, width, 4, 1, 0, bias=False),  # 1x1 -> 4x4
        nn.ReLU(inplace=True),
    ]


class MapNet(nn.Module):
    """Encoder-decoder: image [B, c_in, r, r] -> raw map [B, c_out, r, r] (no output activation)."""

    def __init__(self, c_in: int, c_out: int, resolution: int = 32, nf: int = 16, zdim: int = 64):
        super().__init__()
        widths = _widths(nf, _levels(resolution))
        layers = _down(c_in, widths, norm=True)  # r x r -> 4x4
        layers += _bottleneck(widths[-1], zdim) + [
            nn.Conv2d(widths[-1], widths[-1], 3, 1, 1, bias=False),  # 4x4
            nn.ReLU(inplace=True),
        ]
        for c_hi, c_lo in zip(widths[:0:-1], widths[-2::-1]):  # 4x4 -> ... -> r/2 x r/2
            layers += [
                nn.ConvTranspose2d(c_hi, c_lo, 4, 2, 1, bias=False),  # s x s -> 2s x 2s
                _norm(c_lo),
                nn.ReLU(inplace=True),
                nn.Conv2d(c_lo, c_lo, 3, 1, 1, bias=False),
                _norm(c_lo),
                nn.ReLU(inplace=True),
            ]
        layers += [
            nn.Upsample(scale_factor=2, mode="nearest"),  # r/2 x r/2 -> r x r
            nn.Conv2d(nf, nf, 3, 1, 1, bias=False),
            _norm(nf),
            nn.ReLU(inplace=True),
            nn.Conv2d(nf, nf, 5, 1, 2, bias=False),
            _norm(nf),
            nn.ReLU(inplace=True),
            nn.Conv2d(nf, c_out, 5, 1, 2, bias=False),  # r x r
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConfidenceNet(nn.Module):
    """Images [B, c_in, r, r] -> sigma [B, c_out, r, r] = softplus + eps (> 0, image units in [-1, 1])."""

    def __init__(self, c_in: int, c_out: int, resolution: int = 32, nf: int = 16, zdim: int = 32, eps: float = 1e-4):
        super().__init__()
        widths = _widths(nf, _levels(resolution))
        layers = _down(c_in, widths, norm=True)  # r x r -> 4x4
        layers += _bottleneck(widths[-1], zdim)
        ups = widths[::-1] + [nf]
        for c_hi, c_lo in zip(ups[:-1], ups[1:]):  # 4x4 -> ... -> r x r
            layers += [
                nn.ConvTranspose2d(c_hi, c_lo, 4, 2, 1, bias=False),  # s x s -> 2s x 2s
                _norm(c_lo),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.Conv2d(nf, c_out, 5, 1, 2, bias=False), nn.Softplus()]  # r x r
        self.net = nn.Sequential(*layers)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + self.eps


@dataclass(frozen=True)
class DecomposerConfig:
    """Sizes and output ranges of the decomposition nets.

    Ranges (Unsup3D): depth in [min_depth, max_depth] world units, a border of
    ``border_px`` columns at each side fixed to 0.7 max + 0.3 min (None: 2 px
    at 64x64, scaled with r); rotations +-``rot_range`` degrees, translations
    +-``xy_range`` / +-``z_range`` world units. ``xy_range`` keeps the face centre
    inside the central half of the frame (the half-frame is tan(fov / 2) = 0.0875
    units at the face's distance 1; the synthetic data move it by up to 0.01). ``depth_prior``: see the
    module doc.
    """

    resolution: int = 32
    nf_map: int = 16  # depth and albedo encoder-decoders (Unsup3D: 64)
    zdim_map: int = 64  # (Unsup3D: 256)
    nf_encoder: int = 8  # view and light encoders (Unsup3D: 32)
    nf_conf: int = 8  # both confidence nets (Unsup3D: 64)
    zdim_conf: int = 32  # (Unsup3D: 128)
    min_depth: float = 0.9
    max_depth: float = 1.1
    border_px: int | None = None
    rot_range: float = 60.0
    xy_range: float = 0.04  # Unsup3D: 0.1, more than the half-frame (0.0875 at fov 10): the face could leave it
    z_range: float = 0.1
    sigma_eps: float = 1e-4
    depth_prior: float = 1.0  # amplitude (pre-tanh) of a fixed convex ellipsoid added to the raw depth; 0 = Unsup3D

    @classmethod
    def unsup3d(cls, resolution: int = 64, **kw) -> DecomposerConfig:
        """Unsup3D's widths (13M parameters per map net at 64x64); other fields as given or default."""
        return cls(resolution=resolution, nf_map=64, zdim_map=256, nf_encoder=32, nf_conf=64, zdim_conf=128, **kw)

    def to_dict(self) -> dict:
        return asdict(self)


class Decomposition(NamedTuple):
    """Output of ``Decomposer.forward``."""

    depth: torch.Tensor  # [B, r, r] canonical depth, world units in [min_depth, max_depth]
    albedo: torch.Tensor  # [B, 3, r, r] canonical albedo in [0, 1]
    view: torch.Tensor  # [B, 6] VIEW_NAMES: degrees, world units
    light: torch.Tensor  # [B, 8] LIGHT_NAMES: ambient, diffuse in [0, 1], direction x, y in [-1, 1]
    conf: torch.Tensor  # [B, 1, r, r] sigma of the reconstruction (> 0)
    conf_flip: torch.Tensor  # [B, 1, r, r] sigma of the flipped reconstruction (> 0)


def ellipsoid(size: int, rx: float = 0.6, ry: float = 0.75, device=None) -> torch.Tensor:
    """Unit ellipsoidal cap [size, size]: sqrt(1 - (x/rx)^2 - (y/ry)^2), 0 outside; x, y in [-1, 1]."""
    t = torch.linspace(-1, 1, size, device=device)
    return (1 - (t[None, :] / rx) ** 2 - (t[:, None] / ry) ** 2).clamp_min(0).sqrt()


def depth_from_raw(
    raw: torch.Tensor, min_depth: float = 0.9, max_depth: float = 1.1, border_px: int = 1
) -> torch.Tensor:
    """Raw depth-net output [B, r, r] -> canonical depth [B, r, r] (Unsup3D).

    Subtract the per-image mean (so a constant offset is meaningless: the
    depth's level is fixed by the tanh range, the distance by the view's tz),
    tanh, map (-1, 1) -> (min, max); then fix ``border_px`` columns at the left
    and right edges to 0.7 max + 0.3 min (a wall behind the face's sides).
    """
    d = (raw - raw.mean((1, 2), keepdim=True)).tanh()
    d = (1 + d) / 2 * max_depth + (1 - d) / 2 * min_depth
    if border_px > 0:
        w = d.shape[-1]
        cols = torch.arange(w, device=d.device)
        border = (cols < border_px) | (cols >= w - border_px)
        d = torch.where(border, 0.7 * max_depth + 0.3 * min_depth, d)
    return d


class Decomposer(nn.Module):
    """The decomposition nets together: image [B, 3, r, r] in [-1, 1] -> ``Decomposition``.

    Attributes ``depth_net``, ``albedo_net`` (MapNet), ``view_net``,
    ``light_net`` (Encoder), ``conf_net`` (ConfidenceNet on I, 2 channels:
    reconstruction and flipped reconstruction) and ``mutual_conf_net``
    (ConfidenceNet on cat(I, I'), 1 channel: the mutual reconstruction).
    """

    def __init__(self, config: DecomposerConfig | None = None, **overrides):
        super().__init__()
        cfg = config or DecomposerConfig()
        if overrides:
            cfg = DecomposerConfig(**{**cfg.to_dict(), **overrides})
        self.config = cfg
        r = cfg.resolution
        self.border_px = cfg.border_px if cfg.border_px is not None else max(1, round(2 * r / 64))
        self.depth_net = MapNet(3, 1, r, cfg.nf_map, cfg.zdim_map)
        self.albedo_net = MapNet(3, 3, r, cfg.nf_map, cfg.zdim_map)
        self.view_net = Encoder(3, 6, r, cfg.nf_encoder)
        self.light_net = Encoder(3, 8, r, cfg.nf_encoder)
        self.conf_net = ConfidenceNet(3, 2, r, cfg.nf_conf, cfg.zdim_conf, cfg.sigma_eps)
        self.mutual_conf_net = ConfidenceNet(6, 1, r, cfg.nf_conf, cfg.zdim_conf, cfg.sigma_eps)
        # fixed shape prior (not in the state dict): breaks the convex / concave ambiguity at the start
        self.register_buffer("prior", -cfg.depth_prior * ellipsoid(r), persistent=False)
        self.pivot_offset = 0.0  # fit_pivot's offset for the reported view (train_recon's sidecar); 0 = raw

    @property
    def resolution(self) -> int:
        return self.config.resolution

    def _check(self, images: torch.Tensor) -> None:
        r = self.config.resolution
        if images.dim() != 4 or images.shape[1:] != (3, r, r):
            raise ValueError(f"expected images [B, 3, {r}, {r}], got {tuple(images.shape)} (use models.resize.resize)")

    def predict_depth(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, r, r] -> canonical depth [B, r, r] in [min_depth, max_depth]."""
        c = self.config
        raw = self.depth_net(images)[:, 0]
        if c.depth_prior:
            raw = raw + self.prior
        return depth_from_raw(raw, c.min_depth, c.max_depth, self.border_px)

    def predict_albedo(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, r, r] -> canonical albedo [B, 3, r, r] in [0, 1]."""
        return self.albedo_net(images).tanh() / 2 + 0.5

    def predict_view(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, r, r] -> view [B, 6]: rotations (degrees), translations (world units)."""
        c = self.config
        v = self.view_net(images)
        scale = v.new_tensor([c.rot_range] * 3 + [c.xy_range] * 2 + [c.z_range])
        return v * scale

    def predict_light(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, r, r] -> light [B, 8]: ambient RGB, diffuse RGB in [0, 1]; direction x, y in [-1, 1]."""
        raw = self.light_net(images)
        return torch.cat([raw[:, :6] / 2 + 0.5, raw[:, 6:]], 1)

    def mutual_conf(self, images: torch.Tensor, partners: torch.Tensor) -> torch.Tensor:
        """Sigma [B, 1, r, r] of reconstructing ``images`` with the depth and albedo of ``partners``.

        Input cat(I, I') channel-wise: I gives view and light, I' shape and texture.
        """
        return self.mutual_conf_net(torch.cat([images, partners], 1))

    def forward(self, images: torch.Tensor) -> Decomposition:
        self._check(images)
        conf = self.conf_net(images)
        return Decomposition(
            self.predict_depth(images),
            self.predict_albedo(images),
            self.predict_view(images),
            self.predict_light(images),
            conf[:, :1],
            conf[:, 1:],
        )

    def semantic_view(self, view: torch.Tensor) -> torch.Tensor:
        """A predicted view [B, 6] as reported: translations about the fitted pivot
        (``repivot`` by ``pivot_offset``). Rendering uses the raw view."""
        return repivot(view, self.pivot_offset) if self.pivot_offset else view

    def semantics(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, r, r] -> the 14 univariate semantics [B, 14] (SEMANTIC_NAMES order), the view
        as ``semantic_view`` reports it."""
        self._check(images)
        return torch.cat([self.semantic_view(self.predict_view(images)), self.predict_light(images)], 1)
