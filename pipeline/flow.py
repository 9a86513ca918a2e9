"""The Prefect flow: one task per DVC stage, scheduled from DVC's graph of dvc.yaml.

Each task asks DVC whether its stage is up to date (`dvc status`); if so the task ends in a
`Cached` state, otherwise it runs `dvc repro --single-item STAGE`, so `dvc repro` and
`facesem run` always agree on what is up to date. Independent stages run concurrently
(DVC releases its repo lock while a stage's command runs; `--wait-for-lock` covers the rest),
up to `flow.max_parallel` threads at once, or on a local Dask cluster (`flow.task_runner`),
chosen from params.yaml when each flow run starts (ParamsTaskRunner).

Each attempt of a stage may be limited in time (`flow.timeout_s`, `flow.stage_timeouts`):
past the limit the stage's processes are stopped (its command first, so that DVC records
nothing and releases its locks, then `dvc repro` itself) and the attempt fails as
`TimedOut`; failed or timed-out attempts are retried `flow.retries` times
(`flow.stage_retries` per stage). Stages that finished stay in the DVC cache, so a rerun
starts from the first stage that did not.

The same flow is what `facesem serve` schedules and what prefect.yaml deploys
(entrypoint `pipeline/flow.py:facesem_flow`).
"""

from __future__ import annotations

import collections
import json
import subprocess
import threading
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.states import Completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from pipeline.dag import load_dag
from pipeline.dvc_process import StageTimeout, dvc_command, stage_environment, stage_is_current, stop_process_tree
from pipeline.shard_flow import SHARDABLE, submit_sharded
from support.params import load_params
from support.project import project_root


@task(name="stage")
def run_stage(name: str, root: str, force: bool = False, timeout_s: float | None = None):
    """Reproduce one DVC stage; a `Cached` state when DVC says it is up to date.

    With `timeout_s`, the attempt (the `dvc status` check and `dvc repro`) is limited to
    that many seconds: past it, the stage's processes are stopped and StageTimeout raised.
    """
    logger = get_run_logger()
    root_path = Path(root)
    started = time.monotonic()

    def timed_out() -> StageTimeout:
        return StageTimeout(
            f"stage {name!r} ran past its time limit of {timeout_s:g} s "
            "(flow.timeout_s / flow.stage_timeouts); its processes were stopped"
        )

    try:
        if not force and stage_is_current(name, root_path, timeout=timeout_s):
            logger.info("%s: up to date (DVC cache), skipped", name)
            return Completed(name="Cached", message=f"{name}: up to date")
    except subprocess.TimeoutExpired:
        raise timed_out() from None
    cmd = dvc_command("repro", "--single-item", name, *(["--force"] if force else []))
    tail: collections.deque[str] = collections.deque(maxlen=40)
    cached = False
    expired = threading.Event()
    with subprocess.Popen(
        cmd,
        cwd=root_path,
        env=stage_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None

        def expire() -> None:
            expired.set()
            logger.error("%s: time limit of %g s reached, stopping its processes", name, timeout_s)
            stop_process_tree(proc)

        watchdog = None
        if timeout_s is not None:
            watchdog = threading.Timer(max(0.0, timeout_s - (time.monotonic() - started)), expire)
            watchdog.daemon = True
            watchdog.start()
        try:
            for line in proc.stdout:  # ends when the stage's processes are gone
                line = line.rstrip("\n")
                tail.append(line)
                cached |= "is cached - skipping run" in line or "didn't change, skipping" in line
                logger.info("%s | %s", name, line)
        except BaseException:  # cancelled or interrupted: leave nothing running
            stop_process_tree(proc)
            raise
        finally:
            if watchdog is not None:
                watchdog.cancel()
                if expired.is_set():
                    watchdog.join()  # the processes are stopped before this attempt ends
    if expired.is_set() and proc.returncode != 0:
        logger.error("%s: stopped at its time limit; last output:\n%s", name, "\n".join(tail))
        raise timed_out()
    if proc.returncode != 0:
        raise RuntimeError(f"stage {name!r} failed (exit {proc.returncode}); last output:\n" + "\n".join(tail))
    if cached:
        return Completed(name="Cached", message=f"{name}: restored from the DVC run cache")
    return f"{name}: ran"


class ParamsTaskRunner(TaskRunner):
    """The task runner params.yaml's `flow` section names, chosen when a flow run starts.

    Threads (`flow.max_parallel` of them) or a local Dask cluster (`flow.task_runner: dask`,
    `flow.dask_workers` processes), whichever way the flow is started: `facesem run`,
    `facesem serve`, or a worker that loads the entrypoint `pipeline/flow.py:facesem_flow`
    from prefect.yaml. `flow_params` fixes the choice instead (tests).
    """

    def __init__(self, flow_params=None):
        super().__init__()
        self._fixed = flow_params
        self.inner: TaskRunner | None = None  # the chosen runner while started

    def duplicate(self) -> ParamsTaskRunner:
        return type(self)(self._fixed)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParamsTaskRunner) and other._fixed == self._fixed

    def __enter__(self):
        flow_params = self._fixed or load_params(project_root() / "params.yaml").flow
        self.inner = task_runner(flow_params)
        self.inner.__enter__()
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        try:
            if self.inner is not None:
                self.inner.__exit__(*exc)
        finally:
            self.inner = None
            super().__exit__(*exc)

    def _started_inner(self) -> TaskRunner:
        if self.inner is None:
            raise RuntimeError("The task runner must be started before submitting work.")
        return self.inner

    def submit(self, task, parameters, wait_for=None, dependencies=None):
        return self._started_inner().submit(task, parameters, wait_for, dependencies)

    def map(self, task, parameters, wait_for=None):
        return self._started_inner().map(task, parameters, wait_for)

    def cancel_all(self) -> None:
        if hasattr(self.inner, "cancel_all"):
            self.inner.cancel_all()


@flow(name="facesem", task_runner=ParamsTaskRunner())
def facesem_flow(targets: list[str] | None = None, force: bool = False) -> dict[str, str]:
    """Run the pipeline (or `targets` and their upstream) as Prefect tasks.

    Returns {stage: final state name} ('Completed' = ran, 'Cached' = up to date).
    Independent stages run at once, up to the task runner's workers (`flow.max_parallel`).
    Each stage gets its retries and time limit from params.yaml's `flow` section.
    """
    root = project_root()
    params = load_params(root / "params.yaml")  # fail on bad params before any work
    dag = load_dag(root, targets)
    futures = {}
    for name, upstream in dag.items():
        if params.flow.shards > 1 and name in SHARDABLE:  # shard tasks on the runner's workers
            futures[name] = submit_sharded(
                name,
                str(root),
                params.flow.shards,
                [futures[u] for u in upstream],
                dvc_command(),
                stage_environment(),
                force,
                params.flow,
            )
            continue
        configured = run_stage.with_options(
            task_run_name=name, retries=params.flow.retries_for(name), retry_delay_seconds=params.flow.retry_delay_s
        )
        futures[name] = configured.submit(
            name, str(root), force, params.flow.timeout_for(name), wait_for=[futures[u] for u in upstream]
        )
    for fut in futures.values():
        fut.wait()
    states = {name: fut.state for name, fut in futures.items()}
    failed = {n: s for n, s in states.items() if not s.is_completed()}
    if failed:
        lines = [
            f"  {n}: "
            + (
                "not run, an upstream stage did not complete"
                if s.name == "NotReady"
                else s.name + (": " + s.message.strip().replace("\n", "\n      ") if s.message else "")
            )
            for n, s in failed.items()
        ]  # the whole reason, never cut
        raise RuntimeError("stages failed or did not run (a rerun starts from the cached stages):\n" + "\n".join(lines))
    if "report" in states:
        publish_report(root)
    return {name: state.name for name, state in states.items()}


def publish_report(root: Path) -> str | None:
    """The report's headline tables (data/report/summary.md) as a markdown artifact of this
    flow run (key `facesem-report`), beside a link to the page; None when there is no report."""
    from prefect.artifacts import create_markdown_artifact  # noqa: PLC0415

    summary = root / "data" / "report" / "summary.md"
    if not summary.is_file():
        return None
    page = (root / "data" / "report" / "index.html").resolve()
    text = f"# facesem report\n\nThe full page: `{page}`\n\n" + summary.read_text()
    create_markdown_artifact(markdown=text, key="facesem-report", description="Headline tables of data/report")
    return text


def task_runner(flow_params):
    """`flow.task_runner`: threads (`max_parallel` of them) or a local Dask cluster of
    `dask_workers` single-threaded processes (prefect-dask)."""
    if flow_params.task_runner == "dask":
        from prefect_dask import DaskTaskRunner  # noqa: PLC0415

        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": flow_params.dask_workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
        )
    return ThreadPoolTaskRunner(max_workers=flow_params.max_parallel)


def run_pipeline(targets: list[str] | None = None, force: bool = False) -> dict[str, str]:
    """The flow, in this process (its task runner follows params.yaml's `flow` section)."""
    return facesem_flow(targets=targets, force=force)


def build_deployment(
    name: str = "scheduled",
    cron: str | None = None,
    interval: float | None = None,
    timezone: str | None = None,
    targets: list[str] | None = None,
    force: bool = False,
):
    """The deployment `facesem serve` serves: facesem_flow on a cron or interval schedule.

    Built and validated (schedule, parameters, target stages) without contacting a server.
    """
    from prefect.schedules import Cron, Interval

    if cron is not None and interval is not None:
        raise ValueError("give a cron schedule or an interval, not both")
    schedules = []
    if cron is not None:
        schedules.append(Cron(cron, timezone=timezone or "UTC"))
    elif interval is not None:
        if interval <= 0:
            raise ValueError(f"--interval must be a positive number of seconds, got {interval:g}")
        schedules.append(Interval(interval, timezone=timezone or "UTC"))
    parameters = {"targets": list(targets) if targets else None, "force": force}
    facesem_flow.validate_parameters(parameters)
    if targets:
        load_dag(project_root(), list(targets))  # KeyError naming the stages when one is unknown
    return facesem_flow.to_deployment(
        name=name,
        schedules=schedules or None,
        parameters=parameters,
        tags=["facesem"],
        description="The facesem pipeline (dvc.yaml's stages as Prefect tasks), scheduled.",
    )


def describe_deployment(deployment, next_runs: int = 3) -> str:
    """What a deployment will do, as text: name, entrypoint, schedule(s) with their next
    runs, parameters, the flow settings from params.yaml, and the API it would talk to."""
    import asyncio

    from prefect.server.schemas import schedules as server_schedules
    from prefect.settings import PREFECT_API_URL

    params = load_params(project_root() / "params.yaml")
    lines = [f"deployment: {deployment.flow_name}/{deployment.name}", f"entrypoint: {deployment.entrypoint}"]
    for item in deployment.schedules or []:
        sched = item.schedule
        if hasattr(sched, "cron"):
            server = server_schedules.CronSchedule(cron=sched.cron, timezone=sched.timezone, day_or=sched.day_or)
            what = f"cron {sched.cron!r} ({sched.timezone})"
        else:
            server = server_schedules.IntervalSchedule(
                interval=sched.interval, anchor_date=sched.anchor_date, timezone=sched.timezone
            )
            what = f"every {sched.interval.total_seconds():g} s ({sched.timezone})"
        dates = asyncio.run(server.get_dates(n=next_runs))
        lines.append(f"schedule:   {what}; next runs: " + ", ".join(d.isoformat() for d in dates))
    if not deployment.schedules:
        lines.append(
            "schedule:   none (runs only when triggered: prefect deployment run "
            f"'{deployment.flow_name}/{deployment.name}')"
        )
    lines.append("parameters: " + json.dumps(deployment.parameters))
    flow_params = params.flow
    lines.append(
        f"flow:       task_runner {flow_params.task_runner} (dask_workers {flow_params.dask_workers}, "
        f"shards {flow_params.shards}), max_parallel {flow_params.max_parallel}, retries {flow_params.retries} "
        f"(per stage: {flow_params.stage_retries or '-'}), timeout_s {flow_params.timeout_s} "
        f"(per stage: {flow_params.stage_timeouts or '-'}); read from params.yaml at each run"
    )
    api = PREFECT_API_URL.value()
    lines.append(
        f"api:        {api}"
        if api
        else "api:        PREFECT_API_URL unset (serving needs a Prefect server: `prefect server start`)"
    )
    return "\n".join(lines)
