"""Stage `train_gan`: StyleGAN2 with W decorrelation on faces.zarr, or the linear generator.

Writes `--out` (the exported generator: G_ema weights + sidecar, a sample grid) and keeps
its working state in `--run` (checkpoints, per-snapshot sample grids, curves.csv), which DVC
persists, so an interrupted run resumes from its newest checkpoint instead of restarting.
A checkpoint is reused only if it was made with the same gan params and the same faces data.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from models.decorrelation import mean_abs_rho
from models.gan_metrics import feature_statistics, frechet_distance, path_length, ppl_summary
from models.gan_training import GANTrainer
from models.linear_generator import LinearFaceGenerator
from models.stylegan2 import Discriminator, Generator
from store.artifacts import open_store, write_json
from store.checkpoints import CheckpointError, latest_checkpoint, load_weights, save_checkpoint
from store.datasets import load_images, resize_uint8, to_unit
from store.images import save_grid, signed_to_uint8
from store.stylegan2_formats import read_stylegan2
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
from support.generators import build_stylegan, load_generator, stylegan_config
from support.inception import FEATURE_SPACE, inception_features, inception_sq_distance
from support.params import Params
from support.stage import stage_args
from support.training_run import TrainingRun, trajectory

log = logging.getLogger("stages.train_gan")
# gan params that do not change the training trajectory: a run extended by a larger `kimg`
# (or with other snapshot/logging settings) resumes from its checkpoints
NOT_TRAJECTORY = {
    "kimg",
    "snapshot_kimg",
    "log_every",
    "keep_checkpoints",
    "grid",
    "metric_samples",
    "fid_samples",
    "ppl_samples",
}
CURVE_KEYS = (
    "kimg",
    "loss_G",
    "loss_D",
    "loss_D_real",
    "loss_D_fake",
    "decorr",
    "mean_abs_rho",
    "r1_penalty",
    "pl_penalty",
    "img_per_s",
)


def grid_latents(params: Params, z_dim: int, device) -> torch.Tensor:
    """Fixed z for sample grids (same across snapshots and runs)."""
    g = torch.Generator().manual_seed(params.gan.seed + 1)
    return torch.randn(params.gan.grid**2, z_dim, generator=g).to(device)


def export(out: Path, state: dict, meta: dict, samples: torch.Tensor, grid: int) -> Path:
    """Write generator.safetensors + .json and samples.png into `out` (replaced whole)."""
    if out.exists():
        shutil.rmtree(out)
    weights = save_checkpoint(out, 0, state, meta, name="generator")
    save_grid(signed_to_uint8(samples), out / "samples.png", ncols=grid, scale=2)
    return weights


def w_statistics(gen, n: int, seed: int, device) -> dict:
    z = torch.randn(n, gen.z_dim, generator=torch.Generator().manual_seed(seed + 2)).to(device)
    w = gen.mapping(z)
    return {
        "mean_abs_rho": round(float(mean_abs_rho(w)), 5),
        "mean_abs_rho_space": f"W = F(z) of the exported generator, {n} samples, |Pearson rho| over pairs",
    }


def quality_metrics(gen, reals: torch.Tensor, params: Params, device) -> dict:
    """FID and PPL (Table 1) in the Inception-v3 feature space; see support.inception."""
    gan, out = params.gan, {}
    g = torch.Generator().manual_seed(gan.seed + 3)
    if gan.fid_samples:
        n = min(gan.fid_samples, len(reals))
        real = to_unit(reals[torch.randperm(len(reals), generator=g)[:n]])
        z = torch.randn(n, gen.z_dim, generator=g).to(device)
        fake = torch.cat([gen.synthesis(gen.mapping(z[b : b + 64])).cpu() for b in range(0, n, 64)])
        stats = [feature_statistics(inception_features(x, device)) for x in (real, fake)]
        out.update(
            fid=round(frechet_distance(*stats[0], *stats[1]), 3),
            fid_samples=n,
            fid_space=f"{FEATURE_SPACE}; {n} reals vs {n} generations at {gen.resolution} px "
            "(small-sample FID: biased upward, compare only at equal n)",
        )
    else:
        out.update(fid=None, fid_space="skipped (gan.fid_samples = 0)")
    if gan.ppl_samples:
        z = torch.randn(2 * gan.ppl_samples, gen.z_dim, generator=g).to(device)
        lengths = path_length(gen.mapping, gen.synthesis, partial(inception_sq_distance, device=device), z, generator=g)
        out.update(
            ppl=round(ppl_summary(lengths), 3),
            ppl_space=f"W, end sampling, eps 1e-4, {gan.ppl_samples} pairs, squared L2 of "
            f"{FEATURE_SPACE} (no LPIPS offline)",
        )
    else:
        out.update(ppl=None, ppl_space="skipped (gan.ppl_samples = 0)")
    return out


def run_linear(params: Params, faces: Path, out: Path) -> dict:
    """The ground-truth generator: factor statistics of faces.zarr, seeded directions."""
    group = open_store(faces)
    if "factors" not in group:
        raise ValueError("gan.kind=linear needs ground-truth factors: set data.source=synthetic")
    factors = torch.from_numpy(group["factors"][:])
    gan = params.gan
    net = LinearFaceGenerator(
        gan.w_dim, factors.mean(0), factors.std(0), gan.resolution, seed=gan.seed, asymmetry=params.data.asymmetry
    )
    meta = {
        "kind": "linear",
        "config": {"w_dim": gan.w_dim, "resolution": gan.resolution, "asymmetry": params.data.asymmetry},
        "params_hash": params.section_hash("gan"),
        "faces_params_hash": group.attrs["params_hash"],
        "factor_names": group["factors"].attrs["columns"],
        "kimg": 0,
    }
    with torch.no_grad():
        samples = net(grid_latents(params, gan.w_dim, "cpu"))
    weights = export(out, net.state_dict(), meta, samples, gan.grid)
    gen = load_generator(weights)
    reals = torch.from_numpy(group["images"][: gan.fid_samples])
    return {
        "kind": "linear",
        "kimg": 0,
        **w_statistics(gen, gan.metric_samples, gan.seed, "cpu"),
        **quality_metrics(gen, resize_uint8(reals, gan.resolution), params, "cpu"),
    }


def initial_networks(params: Params, faces_hash: str) -> tuple[Generator, Discriminator, dict, str | None]:
    """G and D to train from: new (`gan.init: scratch`, architecture from the gan section) or
    from the checkpoint `gan.init` names: an NVlabs .pkl, a rosinality .pt or a facesem
    generator.safetensors (store.stylegan2_formats), whose architecture is read from the file.

    Returns (G, D, config, format of the init file or None). Raises CheckpointError /
    FileNotFoundError prefixed with `gan.init`, and ValueError for a training snapshot, or for a
    file without a discriminator when gan.kimg > 0 (such a generator can only be used as is).
    """
    gan = params.gan
    if gan.init == "scratch":
        config = stylegan_config(gan)
        return *build_stylegan(config), config, None
    try:
        imported = read_stylegan2(Path(gan.init))
    except (CheckpointError, FileNotFoundError) as err:
        raise type(err)(f"gan.init: {err}") from None
    config = imported.config
    ours = stylegan_config(gan)
    differs = {k: (ours[k], config[k]) for k in ours if config.get(k) != ours[k]}
    if differs:
        log.info(
            "gan.init %s: the architecture comes from the file (%s format); the gan section's %s are not used",
            gan.init,
            imported.format,
            ", ".join(f"{k} {a} (file: {b})" for k, (a, b) in differs.items()),
        )
    if imported.format == "facesem" and imported.source.get("faces_params_hash") not in (None, faces_hash):
        log.warning(
            "gan.init %s was trained on faces data with params hash %s; today's data has %s",
            gan.init,
            imported.source.get("faces_params_hash"),
            faces_hash,
        )
    if imported.D is None and gan.kimg > 0:
        raise ValueError(
            f"gan.init {gan.init} ({imported.format}) holds no discriminator, so it cannot be trained further: "
            "use it as is with gan.kimg: 0, or give a checkpoint that has D (an NVlabs .pkl, a facesem export)"
        )
    G, D = build_stylegan(config)
    load_weights(G, imported.G_ema, gan.init, f"StyleGAN2 G_ema {config}")
    if imported.D is not None:
        load_weights(D, imported.D, gan.init, f"StyleGAN2 D {config}")
    origin = imported.origin
    log.info(
        "initialised from %s (%s format, from %s, %s kimg)",
        gan.init,
        imported.format,
        origin,
        imported.source.get("kimg"),
    )
    return G, D, config, origin


def run_stylegan(params: Params, faces: Path, out: Path, run_dir: Path, world: World | None = None) -> dict:
    """Train (or resume) StyleGAN2; under torchrun every rank trains on batch_size / world images
    per step with averaged gradients (support/distributed.py) and rank 0 alone writes."""
    world = world or World(0, 1, select_device(params.device))
    gan, device = params.gan, world.device
    if gan.batch_size % world.size:
        raise ValueError(f"gan.batch_size {gan.batch_size} must be divisible by the {world.size} ranks")
    rank_batch = gan.batch_size // world.size
    faces_hash = open_store(faces).attrs["params_hash"]
    G, D, config, init_format = initial_networks(params, faces_hash)
    reals, faces_attrs = load_images(faces, config["resolution"])
    run = TrainingRun(
        "train_gan",
        run_dir,
        trajectory(gan.model_dump(), NOT_TRAJECTORY, faces_params_hash=faces_attrs["params_hash"]),
        world,
        gan.keep_checkpoints,
    )
    G, D = G.to(device), D.to(device)
    broadcast_parameters(G, D)  # identical replicas (no-op in one process)
    trainer = GANTrainer(
        G,
        D,
        batch_size=rank_batch,
        lr=gan.lr,
        r1_gamma=gan.r1_gamma,
        r1_interval=gan.r1_interval,
        pl_weight=gan.pl_weight,
        pl_interval=gan.pl_interval,
        style_mixing_prob=gan.style_mixing_prob,
        ema_kimg=gan.ema_kimg,
        decorr_weight=gan.decorr_weight,
        decorr_batch_size=gan.decorr_batch_size or None,
        seed=gan.seed,
    )
    sampler = torch.Generator().manual_seed(gan.seed)
    shown = 0  # real images shown in this run
    resumed = run.resume(device)
    if resumed is not None:
        state, meta = resumed
        trainer.load_state_dict(state["trainer"])
        sampler.set_state(state["sampler"])
        shown = int(meta["shown"])
        log.info("resumed at %.1f kimg of %.1f", shown / 1000, gan.kimg)
    if world.size > 1:  # each rank its own stream of reals, latents and noise, resumable from the step
        trainer.seed(run.rank_seed(gan.seed, trainer.step_count))
        sampler.manual_seed(run.rank_seed(gan.seed, trainer.step_count) + 1)
        trainer.grad_hook, trainer.world_size = average_gradients, world.size
    barrier()
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = run.read_curves("curves.csv", "kimg", shown / 1000)
    z_grid = grid_latents(params, config["z_dim"], device)
    meta_base = {
        "kind": "stylegan2",
        "config": config,
        "params_hash": params.section_hash("gan"),
        **run.meta,
        "faces_params_hash": faces_attrs["params_hash"],
        "init": gan.init,
        "init_format": init_format,
        "device": str(device),
        "torch": torch.__version__,
    }

    def snapshot() -> None:
        state = {"trainer": trainer.state_dict(), "sampler": sampler.get_state()}
        run.save(trainer.step_count, state, {**meta_base, "shown": shown, "kimg": shown / 1000})
        with torch.no_grad():
            samples = trainer.G_ema.synthesis(
                trainer.G_ema.mapping(z_grid, broadcast=False, update_w_avg=False), noise_mode="const"
            )
        save_grid(
            signed_to_uint8(samples),
            run_dir / "samples" / f"kimg-{shown / 1000:09.3f}.png",
            ncols=gan.grid,
            scale=2,
        )
        run.write_curves("curves.csv", rows, CURVE_KEYS)

    total, next_snap, t0, n0 = int(gan.kimg * 1000), 0.0, time.perf_counter(), shown
    next_snap = (math.floor(shown / 1000 / gan.snapshot_kimg) + 1) * gan.snapshot_kimg
    last: dict[str, float] = {}  # newest value of every stat (lazy regularizers report rarely)
    with tqdm(total=total, initial=shown, desc="train_gan", unit="img", unit_scale=True, disable=not world.main) as bar:
        while shown < total:
            idx = torch.randint(0, len(reals), (rank_batch,), generator=sampler)
            try:
                stats = trainer.step(to_unit(reals[idx]).to(device))
            except FloatingPointError as err:
                raise run.diverged(f"{shown / 1000:.2f} kimg", err) from None
            shown += gan.batch_size
            last.update(stats)
            bar.update(gan.batch_size)
            if trainer.step_count % gan.log_every == 0:
                speed = (shown - n0) / (time.perf_counter() - t0)
                row = {
                    "kimg": round(shown / 1000, 3),
                    "img_per_s": round(speed, 2),
                    **{k: round(float(last.get(k, float("nan"))), 5) for k in CURVE_KEYS[1:-1]},
                }
                rows.append(row)
                bar.set_postfix(G=row["loss_G"], D=row["loss_D"], rho=row["mean_abs_rho"])
            if shown / 1000 >= next_snap or shown >= total:
                if world.main:
                    snapshot()
                next_snap += gan.snapshot_kimg
    if world.main and not latest_checkpoint(run.checkpoints):
        snapshot()  # kimg = 0: still export something loadable
    log.info(
        "rank %d of %d: %d images per step, %d steps, parameters sha256 %s%s",
        world.rank,
        world.size,
        rank_batch,
        trainer.step_count,
        parameter_digest(trainer.G, trainer.D, trainer.G_ema),
        "" if world.main else " (writes nothing)",
    )
    if not world.main:
        return {}
    G_ema, D = trainer.G_ema, trainer.D
    dtype = torch.float32 if init_format in ("nvlabs", "rosinality") else torch.float16  # imported: exact
    export_state = {
        "G_ema": {k: v.to(dtype) for k, v in G_ema.state_dict().items()},
        "D": {k: v.to(dtype) for k, v in D.state_dict().items()},
    }
    with torch.no_grad():
        samples = G_ema.synthesis(G_ema.mapping(z_grid, broadcast=False, update_w_avg=False), noise_mode="const")
    weights = export(out, export_state, {**meta_base, "kimg": trainer.nimg / 1000, "shown": shown}, samples, gan.grid)
    gen = load_generator(weights, device)
    speed = (shown - n0) / max(time.perf_counter() - t0, 1e-9)
    return {
        "kind": "stylegan2",
        "kimg": round(shown / 1000, 3),
        "img_per_s": round(speed, 2),
        "ranks": world.size,
        **w_statistics(gen, gan.metric_samples, gan.seed, device),
        **quality_metrics(gen, reals, params, device),
    }


def run(params: Params, faces: Path, out: Path, run_dir: Path, metrics: Path) -> dict:
    """Train or build the generator; under torchrun (WORLD_SIZE > 1) data-parallel, rank 0 writing."""
    torch.manual_seed(params.gan.seed)
    start = time.perf_counter()
    world = setup(select_device(params.device))
    try:
        if params.gan.kind == "linear":
            if not world.main:
                return {}
            run_dir.mkdir(parents=True, exist_ok=True)  # nothing to resume; DVC expects the folder
            result = run_linear(params, faces, out)
        else:
            result = run_stylegan(params, faces, out, run_dir, world)
            if not world.main:
                return result
        result["seconds"] = round(time.perf_counter() - start, 1)
        write_json(metrics, result)
        return result
    finally:
        barrier()
        teardown()


def main() -> None:
    args, params = stage_args(__doc__.splitlines()[0], ["faces", "out", "run", "metrics"])
    print(run(params, Path(args.faces), Path(args.out), Path(args.run), Path(args.metrics)))


if __name__ == "__main__":
    main()
