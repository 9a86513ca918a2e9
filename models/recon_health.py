"""Is a 3D decomposition healthy? Signs of Unsup3D's degenerate optima, on a fixed probe batch.

A decomposer can fall into states that still render *something* but explain nothing:
the view turns the face out of the frame (few valid pixels left), the light or albedo
saturates to black (a constant reconstruction, and tanh outputs whose gradients vanish),
the predicted yaw stops depending on the input, the relief inverts (the hollow face) or
flattens into a sheet while the view and albedo explain the image (measured on the default
chain with the 450-kimg GAN: convexity 0.031 -> 0.002 while the probe loss still fell, the yaw
saturated at +-54 degrees and the roll spread 29 degrees).
``probe`` measures each sign on a fixed batch of images; ``HealthMonitor`` compares every
snapshot with the best values seen so far in the run and names what has gone wrong.

Measures (``probe``), all floats:

* ``probe_loss``: the photometric NLL of the reconstruction, summed over valid pixels and
  divided by *all* pixels, invalid ones counted at ``invalid_cost`` (Eq. of
  ``models.recon_training.photometric_nll``); nats per pixel and channel, lower is better;
* ``valid_frac``: share of pixels the reconstruction renders (eroded renderer mask), in [0, 1];
* ``recon_contrast``: std of the reconstruction over pixels and images / the inputs' std;
* ``albedo_std``: std of the canonical albedo over pixels and images ([0, 1] units);
* ``yaw_std_deg``: spread of the predicted yaw over the probe images, degrees;
* ``yaw_flip_bias_deg``: mean of (yaw(I) + yaw(flip I)) / 2, degrees; a mirror image has the
  opposite yaw, so a consistent decomposer keeps this near 0;
* ``convexity``: mean canonical depth on a ring around the face minus at its centre (world
  units); > 0 for a convex face (the centre is nearer the camera), < 0 for a hollow one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from models.decomposition import Decomposer, ellipsoid
from models.recon_metrics import erode
from models.recon_training import photometric_nll, render_reconstructions


@torch.no_grad()
def probe(
    decomposer: Decomposer,
    images: torch.Tensor,
    *,
    invalid_cost: float = 2**0.5,
    erode_px: int = 1,
    fov_deg: float = 10.0,
) -> dict[str, float]:
    """The health measures (module doc) of ``decomposer`` on images [B, 3, r, r] in [-1, 1], B >= 2."""
    was_training = decomposer.training
    decomposer.eval()
    dec = decomposer(images)
    rec = render_reconstructions(dec, fov_deg=fov_deg)
    mask = erode(rec.mask, erode_px)
    yaw_flip = decomposer.predict_view(images.flip(3))[:, 1]
    r = images.shape[-1]
    centre = ellipsoid(r, 0.25, 0.3, images.device) > 0
    ring = (ellipsoid(r, 0.55, 0.7, images.device) > 0) & ~(ellipsoid(r, 0.4, 0.5, images.device) > 0)
    depth = dec.depth
    decomposer.train(was_training)
    return {
        "probe_loss": float(photometric_nll(rec.recon, images, dec.conf, mask, invalid_cost)),
        "valid_frac": float(mask.mean()),
        "recon_contrast": float(rec.recon.std() / images.std().clamp_min(1e-6)),
        "albedo_std": float(dec.albedo.std()),
        "yaw_std_deg": float(dec.view[:, 1].std()),
        "yaw_flip_bias_deg": float(((dec.view[:, 1] + yaw_flip) / 2).mean()),
        "convexity": float(depth[:, ring].mean() - depth[:, centre].mean()),
    }


@dataclass
class HealthThresholds:
    """When a measure counts as degenerate. Relative tests compare with the run's best so far."""

    min_valid_frac: float = 0.45  # absolute: fewer rendered pixels = the face left the frame (truth: 0.67-0.78)
    collapse_ratio: float = 0.3  # contrast, albedo std, yaw std or convexity below this x its best so far
    min_learned_contrast: float = 0.2  # ... once the best shows it had learned (contrast, yaw std 3 deg,
    min_learned_yaw_std: float = 3.0  # relief 0.01 world units)
    min_learned_convexity: float = 0.01
    max_flip_bias_deg: float = 15.0  # |yaw(I) + yaw(flip I)| / 2 on average: yaw ignores the input
    max_loss_rise: float = 0.5  # probe loss above its best so far, nats per pixel
    hollow: bool = True  # convexity < 0 is degenerate


RELATIVE = ("recon_contrast", "albedo_std", "yaw_std_deg", "convexity")  # judged against their best so far


@dataclass
class HealthMonitor:
    """Running bests of the probe measures and the verdict of each snapshot.

    ``check(measures) -> reasons`` ([] = healthy; ``failed`` then names the relative measures that
    collapsed), ``update`` folds a healthy snapshot into the bests, ``restart_step`` says where a
    recovery should restart. ``state_dict`` / ``load_state_dict`` (JSON-able) let a resumed run
    continue.
    """

    thresholds: HealthThresholds = field(default_factory=HealthThresholds)
    best: dict[str, float] = field(default_factory=dict)  # best healthy value of each measure
    best_step: int | None = None  # step of the lowest healthy probe loss (yaw learned)
    best_steps: dict[str, int] = field(default_factory=dict)  # step of each RELATIVE measure's best
    failed: list[str] = field(default_factory=list)  # RELATIVE measures the last check found collapsed

    def check(self, m: dict[str, float]) -> list[str]:
        t, b, reasons = self.thresholds, self.best, []
        self.failed = []
        if m["valid_frac"] < t.min_valid_frac:
            reasons.append(
                f"valid-pixel fraction {m['valid_frac']:.2f} < {t.min_valid_frac} "
                "(the view turned the face out of the frame)"
            )
        for key, floor, what in (
            ("recon_contrast", t.min_learned_contrast, "reconstruction near-constant or black"),
            ("albedo_std", None, "canonical albedo near-constant"),
            ("yaw_std_deg", t.min_learned_yaw_std, "estimated yaw no longer varies"),
            (
                "convexity",
                t.min_learned_convexity,
                "relief flattened (a flat sheet: view and albedo explain the image)",
            ),
        ):
            best = b.get(key)
            if best is not None and (floor is None or best >= floor) and m[key] < t.collapse_ratio * best:
                self.failed.append(key)
                reasons.append(f"{what}: {key} {m[key]:.3g} < {t.collapse_ratio} x its best {best:.3g}")
        if abs(m["yaw_flip_bias_deg"]) > t.max_flip_bias_deg:
            reasons.append(
                f"yaw ignores the input: yaw(I) + yaw(mirrored I) averages "
                f"{2 * m['yaw_flip_bias_deg']:.1f} deg (should be 0)"
            )
        if "probe_loss" in b and m["probe_loss"] > b["probe_loss"] + t.max_loss_rise:
            reasons.append(
                f"loss diverged: probe loss {m['probe_loss']:.3f} > best {b['probe_loss']:.3f} + {t.max_loss_rise}"
            )
        if t.hollow and m["convexity"] < 0:
            reasons.append(f"hollow face: canonical depth is concave (convexity {m['convexity']:.4f} < 0)")
        return reasons

    def update(self, step: int, m: dict[str, float]) -> bool:
        """Fold healthy measures into the bests; True when this is the new best (lowest) probe loss
        among snapshots whose yaw varies (``min_learned_yaw_std``). Before the view has learned, a
        flat frontal decomposition renders every pixel and can score lower than any later one
        (measured with yaw augmentation on the default chain: -0.998 at step 250, yaw std 0.25 deg,
        against -0.81 at best afterwards): it would be exported, and refused downstream."""
        for key in RELATIVE:
            if key not in self.best or m[key] > self.best[key]:
                self.best[key], self.best_steps[key] = m[key], step
        learned = m["yaw_std_deg"] >= self.thresholds.min_learned_yaw_std
        new_best = learned and m["probe_loss"] < self.best.get("probe_loss", float("inf"))
        if new_best:
            self.best["probe_loss"], self.best_step = m["probe_loss"], step
        return new_best

    def restart_step(self) -> int | None:
        """Where a recovery restarts after a collapse: the earliest step at which a measure that
        has now collapsed (``failed``) was at its best, or the lowest-loss step if that is earlier
        or nothing relative failed; None (start afresh) when there is neither. A slow drift (the relief
        flattening over 1000 steps while the probe loss still falls) has already degraded the
        lowest-loss snapshot: restarting there re-collapsed both recoveries of the run it was
        measured on (README)."""
        steps = [self.best_steps[k] for k in self.failed if k in self.best_steps]
        steps += [] if self.best_step is None else [self.best_step]
        return min(steps, default=None)

    def rewind(self, step: int, m: dict[str, float]) -> None:
        """Training restarts at `step`, whose measures were `m`: the lowest-loss snapshot becomes that
        one (none if its yaw had not learned), so a later one of the abandoned branch is never exported."""
        if m["yaw_std_deg"] >= self.thresholds.min_learned_yaw_std:
            self.best["probe_loss"], self.best_step = m["probe_loss"], step
        else:
            self.best.pop("probe_loss", None)
            self.best_step = None

    def state_dict(self) -> dict:
        return {
            "thresholds": asdict(self.thresholds),
            "best": dict(self.best),
            "best_step": self.best_step,
            "best_steps": dict(self.best_steps),
        }

    def load_state_dict(self, state: dict) -> None:
        self.thresholds = HealthThresholds(**state["thresholds"])
        self.best, self.best_step = dict(state["best"]), state["best_step"]
        self.best_steps = {k: int(v) for k, v in state.get("best_steps", {}).items()}  # older runs lack it
