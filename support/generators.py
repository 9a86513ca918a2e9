"""Build, save and load the pipeline's generators (StyleGAN2 or the linear ground truth).

Downstream stages see one interface, `LatentGenerator`: `mapping(z) -> w [B, d]` (the
single W vector the paper regresses on) and `synthesis(w) -> images [B, 3, H, W]` in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.linear_generator import LinearFaceGenerator
from models.stylegan2 import Discriminator, Generator, upgrade_legacy_names
from store.checkpoints import CheckpointError, load_checkpoint, load_weights
from support.params import GanParams

STYLEGAN_KEYS = ("z_dim", "w_dim", "mapping_layers", "resolution", "channel_base", "channel_max")


def stylegan_config(gan: GanParams) -> dict[str, int]:
    return {k: getattr(gan, k) for k in STYLEGAN_KEYS}


def build_stylegan(config: dict[str, Any]) -> tuple[Generator, Discriminator]:
    """G and D for a config: STYLEGAN_KEYS (what train_gan's params set), plus what an imported
    checkpoint may add (store.stylegan2_formats): conv_clamp, mapping_lr_mul, D's own
    d_channel_base / d_channel_max / d_conv_clamp, mbstd_group, mbstd_channels."""
    G = Generator(
        **{k: config[k] for k in STYLEGAN_KEYS},
        conv_clamp=config.get("conv_clamp"),
        mapping_lr_mul=config.get("mapping_lr_mul", 0.01),
    )
    D = Discriminator(
        resolution=config["resolution"],
        channel_base=config.get("d_channel_base", config["channel_base"]),
        channel_max=config.get("d_channel_max", config["channel_max"]),
        conv_clamp=config.get("d_conv_clamp", config.get("conv_clamp")),
        mbstd_group=config.get("mbstd_group", 4),
        mbstd_channels=config.get("mbstd_channels", 1),
    )
    return G, D


@dataclass
class LatentGenerator:
    """A trained generator as later stages use it."""

    net: torch.nn.Module
    kind: str
    meta: dict[str, Any]

    @property
    def z_dim(self) -> int:
        return self.net.z_dim

    @property
    def w_dim(self) -> int:
        return self.net.w_dim

    @property
    def resolution(self) -> int:
        return self.net.resolution

    @property
    def num_ws(self) -> int:
        """w vectors synthesis reads (one per layer, W+): StyleGAN2's num_ws, 1 for the linear generator."""
        return self.net.num_ws if self.kind == "stylegan2" else 1

    @property
    def device(self) -> torch.device:
        return next(iter([*self.net.parameters(), *self.net.buffers()])).device

    def modulation_weights(self) -> list[torch.Tensor]:
        """The linear maps from w of every layer that reads it (SeFa's A, one [C, d] per layer):
        the style affines of all modulated convolutions (conv0 / conv1 of every block, as
        SeFa's 'all' layers; not the toRGB ones) for StyleGAN2; diag(scale) M (factors =
        f0 + scale * (M w)) for the linear generator."""
        if self.kind == "stylegan2":
            found = []
            for res in self.net.synthesis.block_resolutions:
                block = getattr(self.net.synthesis, f"b{res}")
                for name in ("conv0", "conv1"):
                    layer = getattr(block, name, None)
                    if layer is not None:
                        found.append(layer.affine.weight.detach() * layer.affine.weight_gain)
            return found
        return [self.net.directions * self.net.scale[:, None]]

    def noise_maps(self) -> dict[str, torch.Tensor]:
        """The constant noise maps synthesis reads, {synthesis buffer name: [r, r]} (the tensors
        themselves, not copies); {} for the linear generator."""
        if self.kind != "stylegan2":
            return {}
        return {n: b for n, b in self.net.synthesis.named_buffers() if n.endswith("noise_const")}

    @torch.no_grad()
    def mapping(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        """z [B, z_dim] -> w [B, w_dim], pulled toward the mean w by truncation_psi < 1."""
        if self.kind == "stylegan2":
            return self.net.mapping(z, truncation_psi, broadcast=False, update_w_avg=False)
        return self.net.mapping(z, truncation_psi)

    def synthesis(self, w: torch.Tensor) -> torch.Tensor:
        """w [B, w_dim], or ws [B, num_ws, w_dim] (one per layer, W+) -> images [B, 3, H, W] in [-1, 1]
        (deterministic: the generator's constant noise maps)."""
        if self.kind == "stylegan2":
            return self.net.synthesis(w, noise_mode="const")
        return self.net.synthesis(w[:, 0] if w.ndim == 3 else w)  # num_ws = 1


def load_generator(weights: str | Path, device: str | torch.device = "cpu") -> LatentGenerator:
    """Load the generator a `train_gan` run (or `facesem import-gan`) exported
    (`generator.safetensors` + sidecar). Raises CheckpointError for a missing or damaged file,
    and names `facesem import-gan` for an NVlabs .pkl or rosinality .pt given directly."""
    if Path(weights).suffix.lower() in (".pkl", ".pt", ".pth"):
        raise CheckpointError(
            f"{weights}: an NVlabs / rosinality checkpoint is imported first: facesem import-gan {weights} "
            "--out DIR, then use DIR/generator.safetensors (or set gan.init to it and run the pipeline)"
        )
    state, meta = load_checkpoint(weights, device)
    kind = meta.get("kind")
    try:
        if kind == "stylegan2":
            net, _ = build_stylegan(meta["config"])
            g_ema = upgrade_legacy_names({k: v.float() for k, v in state["G_ema"].items()})
            load_weights(net, g_ema, weights, f"StyleGAN2 {meta['config']}")
        elif kind == "linear":
            net = LinearFaceGenerator(
                meta["config"]["w_dim"],
                state["f0"],
                state["scale"],
                meta["config"]["resolution"],
                asymmetry=meta["config"]["asymmetry"],
            )
            load_weights(net, state, weights, "linear generator")
        else:
            raise CheckpointError(
                f"{weights}: unknown generator kind {kind!r} in its sidecar (stylegan2 or linear "
                "expected): is it a generator that train_gan exported?"
            )
    except (KeyError, TypeError) as err:
        raise CheckpointError(
            f"{weights}: its sidecar or weights lack {err} for a {kind} generator: is it a "
            "generator that train_gan exported (data/gan/generator.safetensors)?"
        ) from None
    return LatentGenerator(net.to(device).eval().requires_grad_(False), kind, meta)
