"""Processes of a `facesem run` live and die with it; one run per checkout at a time.

`reap_children_on_exit()` starts a small watchdog process (its own session, so a Ctrl-C of the
run's terminal reaches the run first) that records the run's process tree five times a second:
the temporary Prefect server, `dvc repro`, the stage's command. When the run ends in any way,
SIGKILL included, the watchdog stops every recorded process that still runs (SIGTERM, then
SIGKILL after a grace period) and exits. Processes are matched by pid and start time, so a
recycled pid is never signalled.

`run_lock(root)` holds an exclusive lock on the checkout for the length of a run; a second run
is refused at once, naming the pid and start time of the one that holds it.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

POLL_S = 0.2
GRACE_S = 3.0


class RepositoryBusy(RuntimeError):
    """Another `facesem run` holds this checkout."""


def reap_children_on_exit() -> subprocess.Popen:
    """Start the watchdog for this process (see module doc); returns its Popen."""
    here = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.lifetime", str(os.getpid())],
        cwd="/",
        env=env,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
    )


def _key(p: psutil.Process) -> tuple[int, float]:
    return p.pid, p.create_time()


def watch(pid: int, poll_s: float = POLL_S, grace_s: float = GRACE_S) -> list[int]:
    """Record pid's descendants until pid ends, then stop those still running; returns their pids."""
    try:
        parent = psutil.Process(pid)
        born = parent.create_time()
    except psutil.NoSuchProcess:
        return []
    seen: dict[int, float] = {}
    while True:
        try:
            if parent.create_time() != born or parent.status() == psutil.STATUS_ZOMBIE:
                break
            for child in parent.children(recursive=True):
                if child.pid != os.getpid():  # the watchdog is a child of the run too
                    seen.setdefault(*_key(child))
        except psutil.NoSuchProcess:
            break
        time.sleep(poll_s)
    alive: list[psutil.Process] = []
    for child_pid, started in seen.items():
        try:
            p = psutil.Process(child_pid)
            if p.create_time() == started:
                alive += [p, *(c for c in p.children(recursive=True) if c.pid != os.getpid())]
        except psutil.NoSuchProcess:
            pass
    alive = list({p.pid: p for p in alive}.values())
    for p in alive:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, left = psutil.wait_procs(alive, timeout=grace_s)
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return [p.pid for p in alive]


@contextmanager
def run_lock(root: Path) -> Iterator[None]:
    """Exclusive lock of the checkout for one run (`.dvc/tmp/facesem-run.lock`, released on any exit).

    Raises RepositoryBusy naming the holder's pid and start time when another run holds it.
    """
    path = Path(root) / ".dvc" / "tmp" / "facesem-run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise RepositoryBusy(
                f"another `facesem run` ({holder}) is running on {root}: wait for it to end, "
                "or stop it; two runs on one checkout would race on DVC's lock"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)


if __name__ == "__main__":
    watch(int(sys.argv[1]))
