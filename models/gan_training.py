"""StyleGAN2 training logic with the W-decorrelation loss (no I/O).

One :meth:`GANTrainer.step` is one minibatch of StyleGAN2-ADA's training loop
(phases in its order):

1. **G main**: non-saturating logistic loss ``softplus(-D(G(z)))`` with style
   mixing, plus ``decorr_weight * decorrelation_loss(w)`` on the mapped latents
   ``w = F(z)`` of the same batch (or of a separate batch of
   ``decorr_batch_size`` latents). ``w`` depends on the mapping network only, so
   only the mapping network receives the decorrelation gradient.
2. **G path length** (lazy, every ``pl_interval`` steps, batch shrunk by
   ``pl_batch_shrink``): ``pl_weight * (|J_w^T y| - a)^2`` with
   ``y ~ N(0, I) / sqrt(H W)`` and ``a`` the moving mean (decay ``pl_decay``),
   multiplied by ``pl_interval``; separate Adam step.
3. **D main**: ``softplus(D(G(z))) + softplus(-D(x))``.
4. **D R1** (lazy, every ``r1_interval`` steps): ``r1_gamma / 2 * |grad_x D(x)|^2``
   on reals, multiplied by ``r1_interval``; separate Adam step.
5. **EMA** of G: ``beta = 0.5 ** (batch / (ema_kimg * 1000))`` with the
   StyleGAN2-ADA ramp-up ``ema_nimg = min(ema_kimg * 1000, nimg * ema_rampup)``;
   buffers (``w_avg``) are copied.

Lazy regularisation adjusts each optimizer (StyleGAN2 appendix B):
``c = interval / (interval + 1)``, ``lr * c``, ``betas ** c``, applied only when the
corresponding regulariser is on (``pl_weight > 0`` / ``r1_gamma > 0``).

All randomness (z, noise inputs, style mixing, path-length noise) is drawn from
one ``torch.Generator`` owned by the trainer (on the device of G), which is part
of :meth:`GANTrainer.state_dict`, so a restored trainer continues exactly like
an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import time
import warnings

import torch
import torch.nn.functional as F

from .decorrelation import decorrelation_loss, mean_abs_rho
from .stylegan2 import Discriminator, Generator

__all__ = [
    "GANTrainer",
    "adam_for_lazy_regularization",
    "d_logistic_loss",
    "g_nonsaturating_loss",
    "path_length_penalty",
    "r1_penalty",
]


# ---------------------------------------------------------------------- losses (pure functions)


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """G's non-saturating logistic loss, mean of softplus(-D(G(z))) over fakes [B, 1] -> scalar
    (StyleGAN2-ADA `training/loss.py`, Loss_Gmain)."""
    return F.softplus(-fake_logits).mean()


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """D's logistic loss as (on reals, on fakes): mean softplus(-D(x)), mean softplus(D(G(z)));
    logits [B, 1] each; D's loss is their sum (StyleGAN2-ADA Loss_Dgen + Loss_Dreal)."""
    return F.softplus(-real_logits).mean(), F.softplus(fake_logits).mean()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): mean over reals of |grad_x D(x)|^2 -> scalar, differentiable
    (create_graph). `real_images` [B, C, H, W] must require grad and produce `real_logits` [B, 1].
    The caller weights it by r1_gamma / 2."""
    (grads,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)  # [B, C, H, W]
    return grads.square().sum(dim=[1, 2, 3]).mean()


def path_length_penalty(
    images: torch.Tensor, ws: torch.Tensor, noise: torch.Tensor, pl_mean: torch.Tensor, decay: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """StyleGAN2's path-length regulariser (Sec. 3.2, Eq. 4): lengths a = |J_w^T y| per sample,
    y = `noise` [B, C, H, W] (N(0, I) / sqrt(H W)), J the Jacobian of `images` [B, C, H, W] with
    respect to `ws` [B, num_ws, w_dim] (norm over w_dim, mean over layers, then sqrt).

    Returns (penalty = mean (a - mean_new)^2, lengths a [B], mean_new = pl_mean moved towards
    the batch mean by `decay`); the caller weights the penalty by pl_weight and stores mean_new.
    """
    (grads,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)  # [B, num_ws, w_dim]
    lengths = grads.square().sum(dim=2).mean(dim=1).sqrt()  # [B]
    mean = pl_mean.lerp(lengths.mean().detach(), decay)
    return (lengths - mean).square().mean(), lengths, mean


def adam_for_lazy_regularization(
    params, lr: float, betas: tuple[float, float], eps: float, reg_interval: int | None
) -> torch.optim.Adam:
    """Adam with lr and betas corrected for a regulariser evaluated every ``reg_interval`` steps."""
    if reg_interval:
        c = reg_interval / (reg_interval + 1)
        lr = lr * c
        betas = (float(betas[0]) ** c, float(betas[1]) ** c)
    return torch.optim.Adam(params, lr=lr, betas=(float(betas[0]), float(betas[1])), eps=eps)


class GANTrainer:
    """StyleGAN2 trainer (G, D, G_ema, optimizers, regularisers, decorrelation); one `step` per
    minibatch. Constructor arguments are described where they are declared."""

    def __init__(
        self,
        G: Generator,  # the generator being trained (mapping + synthesis)
        D: Discriminator,  # the discriminator
        *,
        batch_size: int,  # nominal minibatch; `step` uses the size of the real batch it gets
        lr: float = 0.0025,  # Adam learning rate of G
        d_lr: float | None = None,  # Adam learning rate of D (None: same as lr)
        betas: tuple[float, float] = (0.0, 0.99),  # Adam betas, before the lazy-regularisation correction
        eps: float = 1e-8,  # Adam epsilon
        r1_gamma: float = 10.0,  # R1 weight (0 = off)
        r1_interval: int = 16,  # R1 evaluated every this many steps (lazy regularisation)
        pl_weight: float = 2.0,  # path-length weight (0 = off)
        pl_interval: int = 4,  # path length evaluated every this many steps
        pl_decay: float = 0.01,  # decay of the moving mean path length
        pl_batch_shrink: int = 2,  # the path-length batch is batch_size // this
        style_mixing_prob: float = 0.9,  # probability of mixing two latents at a random layer cutoff
        ema_kimg: float = 10.0,  # half-life of the G EMA, thousands of images
        ema_rampup: float | None = 0.05,  # EMA half-life ramp-up as a fraction of images shown (None: off)
        decorr_weight: float = 0.0,  # weight of Eq. 1 (0 = off; still evaluated and reported)
        decorr_batch_size: int
        | None = None,  # None: the G batch's w; int: map that many z for Eq. 1 (> w_dim: full rank)
        decorr_reduction: str = "mean",  # "mean" or "sum" over pairs / dims, see models.decorrelation
        seed: int | None = 0,  # seed of a new torch.Generator on G's device (None: nondeterministic)
        generator: torch.Generator | None = None,  # or a ready random generator (overrides seed)
        G_ema: Generator | None = None,  # an existing EMA generator (default: a deep copy of G)
        sync_timing: bool = False,  # synchronise CUDA before reading the clock, for per-phase timings
    ):
        if r1_interval < 1 or pl_interval < 1:
            raise ValueError("r1_interval and pl_interval must be >= 1")
        self.G = G.train()
        self.D = D.train()
        self.G_ema = (copy.deepcopy(G) if G_ema is None else G_ema).eval().requires_grad_(False)
        self.device = next(G.parameters()).device
        self.batch_size = int(batch_size)
        self.r1_gamma = float(r1_gamma)
        self.r1_interval = int(r1_interval)
        self.pl_weight = float(pl_weight)
        self.pl_interval = int(pl_interval)
        self.pl_decay = float(pl_decay)
        self.pl_batch_shrink = int(pl_batch_shrink)
        self.style_mixing_prob = float(style_mixing_prob)
        self.ema_kimg = float(ema_kimg)
        self.ema_rampup = ema_rampup
        self.decorr_weight = float(decorr_weight)
        self.decorr_batch_size = decorr_batch_size
        self.decorr_reduction = decorr_reduction
        self.sync_timing = sync_timing

        self.opt_G = adam_for_lazy_regularization(
            G.parameters(), lr, betas, eps, self.pl_interval if self.pl_weight > 0 else None
        )
        self.opt_D = adam_for_lazy_regularization(
            D.parameters(), lr if d_lr is None else d_lr, betas, eps, self.r1_interval if self.r1_gamma > 0 else None
        )

        if generator is None:
            generator = torch.Generator(device=self.device)
            if seed is not None:
                generator.manual_seed(int(seed))
            else:
                generator.seed()
        self.generator = generator
        self.grad_hook = None  # called with each optimizer before its step (data-parallel averaging)
        self.world_size = 1  # data-parallel ranks: each step shows batch x world_size images in all
        self.step_count = 0  # number of completed step() calls (= minibatch index)
        self.nimg = 0  # real images shown to D so far
        self.pl_mean = torch.zeros([], device=self.device)

    # ------------------------------------------------------------------ utils

    def seed(self, seed: int) -> None:
        """Re-seed the trainer's random generator."""
        self.generator.manual_seed(int(seed))

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=self.device, generator=self.generator)

    def _clock(self) -> float:
        if self.sync_timing and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _check_finite(self, name: str, value: torch.Tensor) -> float:
        v = float(value.detach())
        if not math.isfinite(v):
            raise FloatingPointError(f"non-finite {name} loss ({v}) at training step {self.step_count}")
        return v

    def _map_with_mixing(self, G: Generator, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z [B, z_dim] -> (ws [B, num_ws, w_dim] with style mixing, w [B, w_dim] of z, unmixed).

        Style mixing as StyleGAN2-ADA: one cutoff per batch, drawn uniformly in
        [1, num_ws); with probability ``style_mixing_prob`` layers >= cutoff take the
        w of a second latent. Random draws are made unconditionally (device tensors,
        no host sync), so the random stream does not depend on the outcome.
        """
        w = G.mapping(z, broadcast=False)  # [B, w_dim], updates w_avg in training mode
        ws = w.unsqueeze(1).expand(-1, G.num_ws, -1)  # [B, num_ws, w_dim]
        if self.style_mixing_prob > 0:
            cutoff = torch.randint(1, G.num_ws, [], device=self.device, generator=self.generator)
            mix = torch.rand([], device=self.device, generator=self.generator) < self.style_mixing_prob
            cutoff = torch.where(mix, cutoff, torch.full_like(cutoff, G.num_ws))
            w2 = G.mapping(self._randn(*z.shape), update_w_avg=False, broadcast=False)  # [B, w_dim]
            layer = torch.arange(G.num_ws, device=self.device)
            ws = torch.where((layer >= cutoff)[None, :, None], w2.unsqueeze(1), ws)
        return ws, w

    # ----------------------------------------------------------------- phases

    def g_main_phase(self, batch: int | None = None) -> dict[str, float]:
        """Zero G's grads, compute G's adversarial + decorrelation loss, backpropagate (no optimizer step)."""
        batch = self.batch_size if batch is None else batch
        G, D = self.G, self.D
        G.requires_grad_(True)
        D.requires_grad_(False)
        self.opt_G.zero_grad(set_to_none=True)
        z = self._randn(batch, G.z_dim)  # [B, z_dim]
        ws, w = self._map_with_mixing(G, z)
        img = G.synthesis(ws, noise_mode="random", generator=self.generator)  # [B, C, H, W]
        logits = D(img)  # [B, 1]
        loss_gan = g_nonsaturating_loss(logits)

        t0 = self._clock()
        if self.decorr_batch_size is not None:
            z_dec = self._randn(int(self.decorr_batch_size), G.z_dim)
            w_dec = G.mapping(z_dec, update_w_avg=False, broadcast=False)  # [B_dec, w_dim]
        else:
            w_dec = w
        decorr, corr_term, var_term = decorrelation_loss(w_dec, self.decorr_reduction, return_terms=True)
        rho = mean_abs_rho(w_dec)
        t_decorr = self._clock() - t0

        total = loss_gan + self.decorr_weight * decorr if self.decorr_weight > 0 else loss_gan
        out = {
            "loss_G": self._check_finite("G adversarial", loss_gan),
            "decorr": self._check_finite("decorrelation", decorr),
            "decorr_corr": float(corr_term.detach()),
            "decorr_var": float(var_term.detach()),
            "mean_abs_rho": float(rho),
            "G_fake_logit": float(logits.detach().mean()),
            "time_decorr": t_decorr,
        }
        total.backward()
        return out

    def g_pl_phase(self, gain: float | None = None) -> dict[str, float]:
        """Zero G's grads, compute and backpropagate the path-length penalty (times ``gain``)."""
        gain = float(self.pl_interval) if gain is None else gain
        G, D = self.G, self.D
        G.requires_grad_(True)
        D.requires_grad_(False)
        self.opt_G.zero_grad(set_to_none=True)
        batch = max(self.batch_size // self.pl_batch_shrink, 1)
        z = self._randn(batch, G.z_dim)
        ws, _ = self._map_with_mixing(G, z)  # [b, num_ws, w_dim]
        img = G.synthesis(ws, noise_mode="random", generator=self.generator)  # [b, C, H, W]
        pl_noise = self._randn(*img.shape) / math.sqrt(img.shape[2] * img.shape[3])
        penalty, pl_lengths, pl_mean = path_length_penalty(img, ws, pl_noise, self.pl_mean, self.pl_decay)
        self.pl_mean.copy_(pl_mean)
        loss = penalty * self.pl_weight
        out = {
            "pl_penalty": self._check_finite("path-length", loss),
            "pl_length": float(pl_lengths.detach().mean()),
            "pl_mean": float(pl_mean),
        }
        (loss * gain).backward()
        return out

    def d_main_phase(self, real: torch.Tensor) -> dict[str, float]:
        """Zero D's grads, compute and backpropagate D's logistic loss on fakes and reals."""
        G, D = self.G, self.D
        G.requires_grad_(False)
        D.requires_grad_(True)
        self.opt_D.zero_grad(set_to_none=True)
        with torch.no_grad():
            z = self._randn(real.shape[0], G.z_dim)
            ws, _ = self._map_with_mixing(G, z)
            fake = G.synthesis(ws, noise_mode="random", generator=self.generator)
        fake_logits = D(fake)  # [B, 1]
        real_logits = D(real)  # [B, 1]
        loss_real, loss_fake = d_logistic_loss(real_logits, fake_logits)
        loss = loss_fake + loss_real
        out = {
            "loss_D": self._check_finite("D logistic", loss),
            "loss_D_fake": float(loss_fake.detach()),
            "loss_D_real": float(loss_real.detach()),
            "D_fake_logit": float(fake_logits.detach().mean()),
            "D_real_logit": float(real_logits.detach().mean()),
        }
        loss.backward()
        return out

    def d_r1_phase(self, real: torch.Tensor, gain: float | None = None) -> dict[str, float]:
        """Zero D's grads, compute and backpropagate the R1 penalty on reals (times ``gain``)."""
        gain = float(self.r1_interval) if gain is None else gain
        G, D = self.G, self.D
        G.requires_grad_(False)
        D.requires_grad_(True)
        self.opt_D.zero_grad(set_to_none=True)
        real = real.detach().requires_grad_(True)
        penalty = r1_penalty(D(real), real)
        loss = penalty * (self.r1_gamma / 2)
        out = {"r1_penalty": self._check_finite("R1", loss), "r1_grad_norm2": float(penalty.detach())}
        (loss * gain).backward()
        return out

    @torch.no_grad()
    def update_ema(self, batch: int) -> float:
        """Move G_ema towards G; returns the beta used."""
        ema_nimg = self.ema_kimg * 1000
        if self.ema_rampup is not None:
            ema_nimg = min(ema_nimg, self.nimg * self.ema_rampup)
        beta = 0.5 ** (batch / max(ema_nimg, 1e-8))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)
        return beta

    # ------------------------------------------------------------------- step

    def step(self, real_images: torch.Tensor) -> dict[str, float]:
        """One training iteration on a batch of reals [B, C, H, W] in [-1, 1].

        Returns losses and diagnostics as floats, ``ran_pl`` / ``ran_r1`` (1.0 or
        0.0), ``ema_beta``, ``step``, ``nimg`` and ``time_*`` seconds per phase.
        Raises ``FloatingPointError`` naming the loss if one is not finite.
        """
        G = self.G
        real = real_images.to(self.device, torch.float32)
        expected = (G.img_channels, G.resolution, G.resolution)
        if real.ndim != 4 or tuple(real.shape[1:]) != expected:
            raise ValueError(
                f"real_images must be [batch, {expected[0]}, {expected[1]}, {expected[2]}], got {list(real.shape)}"
            )
        batch = real.shape[0]
        run_pl = self.pl_weight > 0 and self.step_count % self.pl_interval == 0
        run_r1 = self.r1_gamma > 0 and self.step_count % self.r1_interval == 0
        stats: dict[str, float] = {}

        def timed(name: str, phase, optimizer, *args) -> None:
            t0 = self._clock()
            stats.update(phase(*args))
            if self.grad_hook is not None:
                self.grad_hook(optimizer)  # e.g. average gradients over data-parallel ranks
            optimizer.step()
            stats[f"time_{name}"] = self._clock() - t0

        timed("G_main", self.g_main_phase, self.opt_G, batch)
        if run_pl:
            timed("G_pl", self.g_pl_phase, self.opt_G)
        timed("D_main", self.d_main_phase, self.opt_D, real)
        if run_r1:
            timed("D_r1", self.d_r1_phase, self.opt_D, real)
        t0 = self._clock()
        stats["ema_beta"] = self.update_ema(batch * self.world_size)  # EMA half-life in global images
        stats["time_ema"] = self._clock() - t0

        self.G.requires_grad_(True)
        self.D.requires_grad_(True)
        self.step_count += 1
        self.nimg += batch * self.world_size
        stats.update(ran_pl=float(run_pl), ran_r1=float(run_r1), step=float(self.step_count), nimg=float(self.nimg))
        return stats

    @torch.no_grad()
    def sample(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        noise_mode: str = "const",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Images from the EMA generator (does not touch the trainer's random stream)."""
        return self.G_ema(z.to(self.device), truncation_psi=truncation_psi, noise_mode=noise_mode, generator=generator)

    # ------------------------------------------------------------- state dict

    @staticmethod
    def _flatten_optimizer(prefix: str, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        sd = opt.state_dict()
        out = {}
        for index, state in sd["state"].items():
            for key, value in state.items():
                out[f"{prefix}.{index}.{key}"] = torch.as_tensor(value).detach().clone()
        return out

    @staticmethod
    def _unflatten_optimizer(prefix: str, opt: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
        template = opt.state_dict()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in flat.items():
            if not name.startswith(prefix + "."):
                continue
            index, key = name[len(prefix) + 1 :].split(".", 1)
            state.setdefault(int(index), {})[key] = value.clone()
        opt.load_state_dict({"state": state, "param_groups": template["param_groups"]})

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything needed to resume, as a flat ``{name: tensor}`` dict.

        Keys: ``G.*``, ``D.*``, ``G_ema.*`` (module state), ``opt_G.<i>.<key>`` and
        ``opt_D.<i>.<key>`` (Adam state per parameter index), ``trainer.step_count``,
        ``trainer.nimg``, ``trainer.pl_mean``, ``trainer.rng_state``. Every value is
        an independent contiguous tensor (cloned), so
        ``safetensors.torch.save_file(trainer.state_dict(), path)`` works directly.
        Hyper-parameters are not stored: rebuild the trainer with the same arguments.
        """
        out: dict[str, torch.Tensor] = {}
        for name, module in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
            for key, value in module.state_dict().items():
                out[f"{name}.{key}"] = value.detach().clone().contiguous()
        out.update(self._flatten_optimizer("opt_G", self.opt_G))
        out.update(self._flatten_optimizer("opt_D", self.opt_D))
        out["trainer.step_count"] = torch.tensor(self.step_count, dtype=torch.int64)
        out["trainer.nimg"] = torch.tensor(self.nimg, dtype=torch.int64)
        out["trainer.pl_mean"] = self.pl_mean.detach().clone()
        out["trainer.rng_state"] = self.generator.get_state().clone()
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from :meth:`state_dict` (tensors may be on any device).

        The random stream continues exactly only on the same device type (CPU / CUDA
        generator states differ); otherwise it is re-seeded with a warning.
        """
        for name, module in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
            prefix = name + "."
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            module.load_state_dict(sub, strict=True)
        self._unflatten_optimizer("opt_G", self.opt_G, state)
        self._unflatten_optimizer("opt_D", self.opt_D, state)
        self.step_count = int(state["trainer.step_count"])
        self.nimg = int(state["trainer.nimg"])
        self.pl_mean.copy_(state["trainer.pl_mean"].to(self.device))
        try:
            self.generator.set_state(state["trainer.rng_state"].to("cpu", torch.uint8))
        except (RuntimeError, ValueError):
            # CPU and CUDA generator states have different formats: resuming on another
            # device type cannot continue the same random stream.
            warnings.warn(
                "random-generator state saved on another device type; re-seeding with the step count",
                RuntimeWarning,
                stacklevel=2,
            )
            self.generator.manual_seed(self.step_count)
