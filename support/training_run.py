"""One resumable training run: the frame that `train_gan` and `train_recon` share.

A run lives in one folder that DVC persists (`--run`): `checkpoints/ckpt-STEP.safetensors` with
JSON sidecars, `curves.csv` and whatever the stage adds (sample grids, panels, health.csv).
The run is identified by the hash of its *trajectory*: the params (and data) that shape
training, not those that only say how long or how often to save. A rerun with the same
trajectory resumes from the newest checkpoint; any other run in the folder is moved aside
(`<run>.old-<UTC time>`), never deleted. Checkpoints are rotated, keeping the newest few;
under torchrun each rank draws its own random streams, re-derived from the step so that
resuming gives the same streams; a non-finite loss ends the stage naming the checkpoint kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from store.checkpoints import (
    changed_keys,
    latest_checkpoint,
    load_checkpoint,
    load_sidecar,
    prune_checkpoints,
    read_curves,
    save_checkpoint,
    set_aside,
    write_curves,
)
from support.distributed import World

log = logging.getLogger(__name__)
RANK_STRIDE = 1_000_003  # seed offset between ranks (prime, far above any step count)


def trajectory(section: dict, not_trajectory: set[str], **data: object) -> dict:
    """The params of `section` that shape training (all but `not_trajectory`), plus `data`
    (hashes or ids of the training data) under their keyword names."""
    return {**{k: v for k, v in section.items() if k not in not_trajectory}, **data}


def trajectory_hash(trajectory: dict) -> str:
    """16 hex digits of sha256 over the trajectory's sorted JSON."""
    return hashlib.sha256(json.dumps(trajectory, sort_keys=True).encode()).hexdigest()[:16]


class TrainingRun:
    """The run folder of one stage: resume, snapshot, curves, per-rank seeds, divergence.

    stage:       stage name, for messages ("train_gan")
    run_dir:     the run folder (created on first save)
    trajectory:  what identifies the run (see `trajectory`); stored in every sidecar
    world:       this process's rank, world size and device (support.distributed.World)
    keep:        checkpoints kept by `save` (newest first; `best` and other names untouched)
    """

    def __init__(self, stage: str, run_dir: Path, trajectory: dict, world: World, keep: int):
        self.stage, self.dir, self.trajectory, self.world, self.keep = stage, Path(run_dir), trajectory, world, keep
        self.run_hash = trajectory_hash(trajectory)
        self.checkpoints = self.dir / "checkpoints"

    @property
    def meta(self) -> dict:
        """Sidecar fields every checkpoint of this run carries (`run_hash`, `trajectory`)."""
        return {"run_hash": self.run_hash, "trajectory": self.trajectory}

    def resume(self, device) -> tuple[dict, dict] | None:
        """(state, sidecar) of the newest checkpoint when it belongs to this trajectory, else None.

        A folder holding another run is moved aside by rank 0 (the changed params logged).
        Raises store.checkpoints.CheckpointError when the newest checkpoint is unreadable.
        """
        latest = latest_checkpoint(self.checkpoints)
        old = load_sidecar(latest) if latest is not None else {}
        if latest is not None and old.get("run_hash") == self.run_hash:
            log.info("%s: resuming from %s in %s", self.stage, latest.name, self.checkpoints)
            return load_checkpoint(latest, device)
        if self.world.main:
            set_aside(self.dir, self.stage, changed_keys(old.get("trajectory"), self.trajectory))
        return None

    def rank_seed(self, seed: int, step: int) -> int:
        """The seed of this rank's random streams at `step` (one process: seed + step)."""
        return seed + RANK_STRIDE * self.world.rank + step

    def save(self, step: int, state: dict, meta: dict, name: str | None = None) -> Path:
        """Write checkpoint ckpt-STEP (or `name`, e.g. "best", which is never rotated) with this
        run's sidecar fields; keep the newest `keep` ckpt-* files."""
        path = save_checkpoint(self.checkpoints, step, state, {**self.meta, **meta}, name=name)
        if name is None:
            prune_checkpoints(self.checkpoints, self.keep)
        return path

    def read_curves(self, name: str, x: str, upto: float) -> list[dict]:
        """Rows of `name` (a CSV in the run folder) up to x = `upto`: the resumed run's history."""
        return read_curves(self.dir / name, x, upto)

    def write_curves(self, name: str, rows: list[dict], keys: tuple[str, ...]) -> None:
        write_curves(self.dir / name, rows, keys)

    def diverged(self, where: str, err: Exception) -> SystemExit:
        """The exit for a non-finite loss at `where` ("step 120", "3.20 kimg"), naming the checkpoint kept."""
        return SystemExit(
            f"{self.stage}: training diverged at {where} ({err}); the last good checkpoint is kept: "
            f"{latest_checkpoint(self.checkpoints)}"
        )
