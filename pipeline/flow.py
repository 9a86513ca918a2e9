"""The Prefect flow: one task per DVC stage, scheduled from DVC's graph of dvc.yaml.

Each task asks DVC whether its stage is up to date (`dvc status`); if so the task ends in a
`Cached` state, otherwise it runs `dvc repro --single-item STAGE`, so `dvc repro` and
`facesem run` always agree on what is up to date. Independent stages run concurrently
(DVC releases its repo lock while a stage's command runs; `--wait-for-lock` covers the rest).
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.states import Completed
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline.dag import load_dag
from pipeline.env import project_root
from pipeline.params import load_params


def dvc_command(*args: str) -> list[str]:
    """`dvc` of this interpreter's environment (works without an activated venv)."""
    return [sys.executable, "-m", "dvc", "--wait-for-lock", *args]


def stage_environment() -> dict[str, str]:
    """The environment for stage commands: this interpreter's bin/ first on PATH, so that
    dvc.yaml's `python -m stages.X` runs in the same venv."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TQDM_MININTERVAL", "15")  # progress lines become Prefect log records: keep few
    return env


def stage_is_current(name: str, root: Path) -> bool:
    """True when DVC reports nothing changed for this stage (deps, params, outs, cmd)."""
    proc = subprocess.run(dvc_command("status", name, "--json"), cwd=root, env=stage_environment(),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`dvc status {name}` failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout or "{}") == {}


@task(name="stage")
def run_stage(name: str, root: str, force: bool = False):
    """Reproduce one DVC stage; a `Cached` state when DVC says it is up to date."""
    logger = get_run_logger()
    root_path = Path(root)
    if not force and stage_is_current(name, root_path):
        logger.info("%s: up to date (DVC cache), skipped", name)
        return Completed(name="Cached", message=f"{name}: up to date")
    cmd = dvc_command("repro", "--single-item", name, *(["--force"] if force else []))
    tail: collections.deque[str] = collections.deque(maxlen=40)
    cached = False
    with subprocess.Popen(cmd, cwd=root_path, env=stage_environment(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            cached |= "is cached - skipping run" in line or "didn't change, skipping" in line
            logger.info("%s | %s", name, line)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {name!r} failed (exit {proc.returncode}); last output:\n"
                           + "\n".join(tail))
    if cached:
        return Completed(name="Cached", message=f"{name}: restored from the DVC run cache")
    return f"{name}: ran"


@flow(name="facesem")
def facesem_flow(targets: list[str] | None = None, force: bool = False) -> dict[str, str]:
    """Run the pipeline (or `targets` and their upstream) as Prefect tasks.

    Returns {stage: final state name} ('Completed' = ran, 'Cached' = up to date).
    Independent stages run at once, up to the task runner's workers (see `run_pipeline`).
    """
    root = project_root()
    params = load_params(root / "params.yaml")  # fail on bad params before any work
    dag = load_dag(root, targets)
    futures = {}
    for name, upstream in dag.items():
        configured = run_stage.with_options(task_run_name=name, retries=params.flow.retries,
                                            retry_delay_seconds=params.flow.retry_delay_s)
        futures[name] = configured.submit(name, str(root), force,
                                          wait_for=[futures[u] for u in upstream])
    for fut in futures.values():
        fut.wait()
    states = {name: fut.state for name, fut in futures.items()}
    failed = [n for n, s in states.items() if not s.is_completed()]
    if failed:
        raise RuntimeError(f"stages failed or did not run: {failed}")
    return {name: state.name for name, state in states.items()}


def run_pipeline(targets: list[str] | None = None, force: bool = False) -> dict[str, str]:
    """The flow with a thread-pool task runner of `flow.max_parallel` workers."""
    params = load_params(project_root() / "params.yaml")
    runner = ThreadPoolTaskRunner(max_workers=params.flow.max_parallel)
    return facesem_flow.with_options(task_runner=runner)(targets=targets, force=force)
