"""Shardable stages split over a task runner's workers (a Dask cluster: `flow.task_runner: dask`).

`sample_latents` and `decompose` write chunks of one Zarr store independently
(`store/chunked.py`): the flow runs the stage's dvc.yaml command with `--prepare`, then
`--shard i/n` for i < n as separate tasks (on any worker; each writes a disjoint region), then
`--finalize` (checks every chunk, marks the store complete), then `dvc commit` so that DVC
records the outputs exactly as if `dvc repro` had run the stage. The result equals the
single-process store (each chunk draws from a seed of its own).
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import yaml
from prefect import task
from prefect.states import Completed

from pipeline.dvc_process import StageTimeout, stage_is_current, stop_process_tree

SHARDABLE = ("sample_latents", "decompose")


def stage_command(root: Path, name: str) -> list[str]:
    """The stage's `cmd` from dvc.yaml as an argument list."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    if name not in stages:
        raise KeyError(f"stage {name!r} is not in {root / 'dvc.yaml'}")
    return shlex.split(stages[name]["cmd"])


def _call(cmd: list[str], root: Path, env: dict[str, str], what: str, timeout_s: float | None = None) -> None:
    """Run one part; past `timeout_s` its processes are stopped and StageTimeout raised."""

    with subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop_process_tree(proc)
            raise StageTimeout(
                f"{what} ran past its time limit of {timeout_s:g} s (flow.timeout_s / "
                "flow.stage_timeouts, applied to each part); its processes were stopped"
            ) from None
        except BaseException:  # cancelled or interrupted: leave nothing running
            stop_process_tree(proc)
            raise
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{out[-3000:]}")


@task(name="shard")
def run_part(
    name: str,
    root: str,
    part: str,
    env: dict[str, str],
    force: bool = False,
    prepared: str = "",
    timeout_s: float | None = None,
) -> str:
    """One part of a sharded stage: part is 'prepare', 'i/n' or 'finalize'. `prepare` first asks
    DVC whether the stage is up to date and returns 'cached' if so; the later parts receive
    that result (`prepared`) and then do nothing."""
    if prepared == "cached":
        return "cached"
    if part == "prepare" and not force:
        if stage_is_current(name, Path(root)):
            return "cached"
    flag = ["--shard", part] if "/" in part else [f"--{part}"]
    _call(stage_command(Path(root), name) + flag, Path(root), env, f"{name} {part}", timeout_s)
    return f"{name} {part}"


@task(name="commit")
def commit_stage(name: str, root: str, dvc: list[str], env: dict[str, str], prepared: str = ""):
    """Record the stage's deps and outs in dvc.lock (what `dvc repro` would have written)."""
    if prepared == "cached":
        return Completed(name="Cached", message=f"{name}: up to date")
    _call([*dvc, "commit", "--force", name], Path(root), env, f"dvc commit {name}")
    return f"{name}: ran in shards"


def submit_sharded(
    name: str,
    root: str,
    shards: int,
    wait_for: list,
    dvc: list[str],
    env: dict[str, str],
    force: bool = False,
    flow_params=None,
):
    """Submit prepare -> `shards` shard tasks -> finalize -> dvc commit; returns the commit task's future.

    Every part gets the stage's retries and time limit from `flow_params` (params.yaml's `flow`):
    a part is idempotent (it rewrites its own region), so a retry redoes only that part.
    """
    retries = flow_params.retries_for(name) if flow_params else 0
    delay = flow_params.retry_delay_s if flow_params else 0
    timeout_s = flow_params.timeout_for(name) if flow_params else None

    def part(label: str):
        return run_part.with_options(task_run_name=f"{name}-{label}", retries=retries, retry_delay_seconds=delay)

    prepared = part("prepare").submit(name, root, "prepare", env, force, timeout_s=timeout_s, wait_for=wait_for)
    parts = [
        part(f"{i}of{shards}").submit(name, root, f"{i}/{shards}", env, force, prepared, timeout_s)
        for i in range(shards)
    ]
    final = part("finalize").submit(name, root, "finalize", env, force, prepared, timeout_s, wait_for=parts)
    return commit_stage.with_options(task_run_name=name, retries=retries, retry_delay_seconds=delay).submit(
        name, root, dvc, env, prepared, wait_for=[final]
    )
