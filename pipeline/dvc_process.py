"""DVC commands and the processes they start: the interpreter's `dvc`, the stages' environment,
`dvc status` of one stage, and stopping a `dvc repro` with everything below it.

Used by the flow (`pipeline/flow.py`), its sharded stages (`pipeline/shard_flow.py`) and the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil


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


def stage_is_current(name: str, root: Path, timeout: float | None = None) -> bool:
    """True when DVC reports nothing changed for this stage (deps, params, outs, cmd)."""
    proc = subprocess.run(
        dvc_command("status", name, "--json"),
        cwd=root,
        env=stage_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        said = "\n".join(t.strip() for t in (proc.stderr, proc.stdout) if t.strip()) or "(no output)"
        raise RuntimeError(f"`dvc status {name}` failed (exit {proc.returncode}):\n{said}")
    return json.loads(proc.stdout or "{}") == {}


class StageTimeout(TimeoutError):
    """An attempt of a stage ran past its time limit; its processes were stopped.

    A TimeoutError, so Prefect shows the task run as `TimedOut` (and retries it)."""


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def stop_process_tree(proc: subprocess.Popen, grace_s: float = 5.0) -> list[int]:
    """Stop `proc` (a `dvc repro`) and every process below it (the stage's command).

    The leaves go first (SIGTERM), level by level, so each parent sees its child exit:
    DVC then fails the stage itself, records nothing in dvc.lock and releases its locks,
    and no orphan is left behind. Whatever is still running after `grace_s` is killed
    (SIGKILL), `proc` last. Returns the pids that were signalled.
    """
    signalled: list[int] = []
    deadline = time.monotonic() + grace_s
    try:
        root = psutil.Process(proc.pid)
    except psutil.NoSuchProcess:
        root = None
    while root is not None and time.monotonic() < deadline:
        try:
            tree = [p for p in root.children(recursive=True) if not _gone(p)]
        except psutil.NoSuchProcess:
            break
        if not tree:
            break
        for leaf in tree:
            try:
                if not leaf.children():
                    leaf.terminate()
                    signalled.append(leaf.pid)
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.2)
    if root is not None:  # past the grace period: kill what is left below proc
        try:
            for p in root.children(recursive=True):
                if not _gone(p):
                    p.kill()
                    signalled.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    if proc.poll() is None:  # DVC normally exits by itself once its command is gone
        try:
            proc.wait(timeout=max(0.5, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.terminate()
            signalled.append(proc.pid)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return sorted(set(signalled))
