"""params.yaml's `flow` section: per-stage retries and time limits, validated against dvc.yaml,
and what they do in the Prefect flow: a stage past its limit is stopped with every process
it started, shows as TimedOut (after its retries), and a rerun continues from the cached stages."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from pipeline.dvc_process import stop_process_tree
from pipeline.env import environment_defaults
from support.params import Params, ParamsError, load_params
from tests.conftest import make_params, params_dict

REPO = Path(__file__).resolve().parent.parent


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---- validation -----------------------------------------------------------------------------


def test_flow_overrides_resolve_per_stage():
    flow = make_params(
        **{
            "flow": {
                "retries": 1,
                "timeout_s": 3600,
                "stage_retries": {"train_gan": 3},
                "stage_timeouts": {"faces": 60, "preview": None},
            }
        }
    ).flow
    assert flow.retries_for("train_gan") == 3 and flow.retries_for("faces") == 1
    assert flow.timeout_for("faces") == 60 and flow.timeout_for("train_gan") == 3600
    assert flow.timeout_for("preview") is None  # null: no limit for that stage
    defaults = make_params().flow
    assert defaults.timeout_s is None and defaults.stage_retries == {} and defaults.stage_timeouts == {}
    assert defaults.timeout_for("faces") is None and defaults.retries_for("faces") == 0


@pytest.mark.parametrize(
    "flow, fragments",
    [
        ({"stage_retries": {"train_gna": 2}}, ["flow.stage_retries", "train_gna", "train_gan"]),
        ({"stage_timeouts": {"nope": 5}}, ["flow.stage_timeouts", "nope", "faces"]),
        ({"stage_timeouts": {"faces": 0}}, ["flow.stage_timeouts.faces", "greater than 0"]),
        ({"stage_retries": {"faces": 11}}, ["flow.stage_retries.faces", "less than or equal to 10"]),
        ({"stage_retries": {"faces": "x"}}, ["flow.stage_retries.faces", "'x'"]),
        ({"timeout_s": -1}, ["flow.timeout_s", "greater than 0"]),
        ({"timeouts": 5}, ["flow.timeouts", "unknown key", "stage_timeouts"]),
    ],
)
def test_bad_flow_params_name_the_key(flow, fragments):
    with pytest.raises(ParamsError) as info:
        make_params(**{"flow": flow})
    for fragment in fragments:
        assert fragment in str(info.value)


def test_stage_names_come_from_the_context_or_the_projects_dvc_yaml(tmp_path, monkeypatch):
    raw = params_dict(flow={"stage_retries": {"only": 1}})
    assert Params.model_validate(raw, context={"stages": ["only"]}).flow.retries_for("only") == 1
    # foreach / matrix stages are addressed as name@key
    Params.model_validate(params_dict(flow={"stage_timeouts": {"only@a": 2}}), context={"stages": ["only"]})
    with pytest.raises(ValueError, match="unknown stage"):
        Params.model_validate(raw, context={"stages": ["other"]})
    # without a context: the dvc.yaml of the project the process works in
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"only": {"cmd": "true"}}}))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    assert load_params(tmp_path / "params.yaml").flow.stage_retries == {"only": 1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict(flow={"stage_retries": {"faces": 1}})))
    with pytest.raises(ParamsError, match=r"flow\.stage_retries.*unknown stage.*'faces'.*\['only'\]"):
        load_params(tmp_path / "params.yaml")


def test_shipped_flow_section_is_complete_and_valid():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())["flow"]
    assert {"timeout_s", "stage_retries", "stage_timeouts"} <= set(raw)
    load_params(REPO / "params.yaml")


# ---- stopping a stage's processes -----------------------------------------------------------

_TREE = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", {child!r}])
print(child.pid, flush=True)
child.wait()
"""
_READY = "; print('ready', flush=True); "  # the child says so once its signal handler is set


@pytest.mark.parametrize("ignore_term", [False, True])
def test_stop_process_tree_leaves_nothing_running(ignore_term):
    """dvc -> stage command, modelled by a parent and its sleeping child: both end, the child
    first; a child that ignores SIGTERM is killed after the grace period."""
    child = (
        f"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN){_READY}time.sleep(60)"
        if ignore_term
        else f"import time{_READY}time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", _TREE.format(child=child)], stdout=subprocess.PIPE, text=True)
    grandchild = int(proc.stdout.readline())
    assert proc.stdout.readline().strip() == "ready"  # readiness signal, not a sleep
    t0 = time.monotonic()
    signalled = stop_process_tree(proc, grace_s=1.5)
    assert time.monotonic() - t0 < 10
    assert grandchild in signalled
    assert proc.returncode is not None and not _running(grandchild)
    proc.stdout.close()


# ---- in the flow ----------------------------------------------------------------------------

SLOW = (
    'import os, time; open("slow.pids", "a").write(f"{os.getpid()}\\n"); '
    'time.sleep(float(os.environ.get("SLOW_S", "60"))); open("slow.txt", "w").write("done")'
)
DVC_YAML = {
    "stages": {
        "quick": {"cmd": 'python -c \'open("quick.txt", "w").write("done")\'', "outs": ["quick.txt"]},
        "slow": {"cmd": f"python -c '{SLOW}'", "deps": ["quick.txt"], "outs": ["slow.txt"]},
        "after": {
            "cmd": 'python -c \'open("after.txt", "w").write("done")\'',
            "deps": ["slow.txt"],
            "outs": ["after.txt"],
        },
    }
}


def _tool_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DVC_"))}
    env.update(environment_defaults(root))  # PREFECT_HOME and DVC state inside root, no telemetry
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(REPO)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _processes_in(root: Path) -> list[str]:
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid != os.getpid() and Path(p.cwd()) == root and p.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{p.pid}: {' '.join(p.info['cmdline'] or [])}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
            pass
    return found


@pytest.mark.slow
def test_timeout_stops_the_stage_then_a_rerun_continues_from_the_cache(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (root / "params.yaml").write_text(
        yaml.safe_dump(  # 20 s: dvc status + dvc repro fit it on a busy machine
            params_dict(flow={"retry_delay_s": 0, "stage_retries": {"slow": 1}, "stage_timeouts": {"slow": 20}})
        )
    )
    env = _tool_env(root)
    env["SLOW_S"] = "600"  # far past the limit: only a stop ends it
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, env=env, check=True)
    run = [sys.executable, "-m", "pipeline.cli", "run"]

    first = subprocess.run(run, cwd=root, env=env, capture_output=True, text=True, timeout=400)
    out = first.stdout + first.stderr
    assert first.returncode == 2, out[-3000:]
    assert "slow: TimedOut" in out and "ran past its time limit of 20 s" in out, out[-3000:]
    assert "after: not run" in out
    assert "Retry 1/1" in out  # flow.stage_retries.slow: a second attempt, limited too
    pids = [int(x) for x in (root / "slow.pids").read_text().split()]
    assert len(pids) == 2
    assert not [pid for pid in pids if _running(pid)], "a timed-out stage command is still running"
    assert _processes_in(root) == []  # no dvc repro left behind either
    assert (root / "quick.txt").exists() and not (root / "slow.txt").exists()

    # the stage is fast now (same command: DVC sees the same stage); quick comes from the cache
    env["SLOW_S"] = "0"
    second = subprocess.run(run, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    states = dict(line.split() for line in second.stdout.strip().splitlines()[-3:])
    assert states == {"quick": "Cached", "slow": "Completed", "after": "Completed"}
    assert (root / "after.txt").read_text() == "done"
    assert (root / ".prefect").is_dir()  # Prefect kept its state in the temporary repo


WHERE = """
import os
from prefect import flow, task
from pipeline.flow import facesem_flow

@task
def where():
    return os.getpid()

@flow(task_runner=facesem_flow.task_runner)  # the runner a deployment's worker gets
def probe():
    return where.submit().result()

if __name__ == "__main__":  # Dask's worker processes import this module again
    print(type(facesem_flow.task_runner).__name__, "in-process" if probe() == os.getpid() else "elsewhere")
"""


@pytest.mark.slow
@pytest.mark.parametrize("runner, where", [("threads", "in-process"), ("dask", "elsewhere")])
def test_the_flows_own_task_runner_follows_params_yaml(tmp_path, runner, where):
    """`flow.task_runner` is read when a flow run starts, so the deployed entrypoint
    (pipeline/flow.py:facesem_flow, as `facesem serve` and prefect.yaml run it) honours dask too."""
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict(flow={"task_runner": runner, "dask_workers": 1})))
    (tmp_path / "probe.py").write_text(WHERE)
    proc = subprocess.run(
        [sys.executable, "probe.py"], cwd=tmp_path, env=_tool_env(tmp_path), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert proc.stdout.split("\n")[-2] == f"ParamsTaskRunner {where}", proc.stdout[-2000:]


PART = (
    'import os, sys, time; part = sys.argv[-1]; open("parts.log", "a").write(f"{os.getpid()} {part}\\n"); '
    'time.sleep(float(os.environ.get("SLOW_S", "60")) if "/" in part else 0); '
    'part == "--finalize" and open("out.txt", "w").write("done")'
)


@pytest.mark.slow
def test_shard_tasks_get_the_stages_time_limit_and_retries(tmp_path):
    """`flow.shards`: each part of a sharded stage (here a stand-in named `decompose`) is limited
    by the stage's timeout, stopped past it, retried `stage_retries` times; a rerun completes it."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {"decompose": {"cmd": f"python -c '{PART}'", "outs": ["out.txt"]}}})
    )
    (root / "params.yaml").write_text(
        yaml.safe_dump(
            params_dict(
                flow={
                    "shards": 2,
                    "retry_delay_s": 0,
                    "stage_retries": {"decompose": 1},
                    "stage_timeouts": {"decompose": 20},
                }
            )
        )
    )
    env = _tool_env(root)
    env["SLOW_S"] = "600"
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, env=env, check=True)
    run = [sys.executable, "-m", "pipeline.cli", "run"]

    first = subprocess.run(run, cwd=root, env=env, capture_output=True, text=True, timeout=400)
    out = first.stdout + first.stderr
    assert first.returncode == 2, out[-3000:]
    assert "ran past its time limit of 20 s" in out and "Retry 1/1" in out, out[-3000:]
    parts = [line.split() for line in (root / "parts.log").read_text().splitlines()]
    shard_pids = [int(pid) for pid, part in parts if "/" in part]
    assert sorted(part for _, part in parts if "/" in part) == ["0/2", "0/2", "1/2", "1/2"]  # 2 attempts each
    assert not [pid for pid in shard_pids if _running(pid)], "a timed-out shard is still running"
    assert not (root / "out.txt").exists()

    env["SLOW_S"] = "0"
    second = subprocess.run(run, cwd=root, env=env, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    assert (root / "out.txt").read_text() == "done"
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    assert (status.stdout.strip() or "{}") == "{}"  # dvc commit recorded the sharded run


def _run_until_the_slow_stage(tmp_path):
    """A DVC project of DVC_YAML and a `facesem run` of it, returned once the slow stage's command runs."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (root / "params.yaml").write_text(yaml.safe_dump(params_dict()))
    env = _tool_env(root)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, env=env, check=True)
    run = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600  # a failsafe: Prefect's server can take minutes on a busy machine
    while not (root / "slow.pids").exists():  # readiness: the slow stage's command has started
        if run.poll() is not None or time.monotonic() > deadline:
            run.kill()
            raise AssertionError("the flow did not reach the slow stage")
        time.sleep(0.1)
    return root, env, run


@pytest.mark.slow
def test_a_run_killed_with_sigkill_leaves_no_process_behind(tmp_path):
    """`facesem run` killed with SIGKILL during a stage: the Prefect server, `dvc repro` and the
    stage's command all end within a few seconds (pipeline/lifetime.py's watchdog)."""
    root, _, run = _run_until_the_slow_stage(tmp_path)
    assert len(_processes_in(root)) >= 3  # facesem, the Prefect server, dvc repro, the stage
    run.kill()
    run.wait()
    deadline = time.monotonic() + 15
    while _processes_in(root) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_in(root) == []
    stage = int((root / "slow.pids").read_text().split()[0])
    assert not _running(stage)


@pytest.mark.slow
def test_a_second_run_on_the_same_checkout_is_refused_naming_the_first(tmp_path):
    root, env, first = _run_until_the_slow_stage(tmp_path)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        assert f"another `facesem run` (pid {first.pid}, started" in second.stderr, second.stderr[-2000:]
    finally:
        first.kill()
        first.wait()


SPAN = (
    "import os, sys, time; t0 = time.time(); time.sleep(0.5); "
    'open("spans.log", "a").write(f"{sys.argv[-1]} {t0} {time.time()}\\n"); open(sys.argv[-1] + ".txt", "w")'
)
FAIL = 'import sys; open("attempts.log", "a").write("x\\n"); sys.exit(1)'


@pytest.mark.slow
def test_retries_and_max_parallel_in_the_flow(tmp_path):
    """flow.retries 2: a failing stage runs 3 times; flow.max_parallel 1: independent stages never overlap."""
    root = tmp_path / "repo"
    root.mkdir()
    stages = {name: {"cmd": f"python -c '{SPAN}' {name}", "outs": [f"{name}.txt"]} for name in ("a", "b", "c")}
    stages["fails"] = {"cmd": f"python -c '{FAIL}'", "outs": ["never.txt"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (root / "params.yaml").write_text(
        yaml.safe_dump(params_dict(flow={"max_parallel": 1, "retries": 2, "retry_delay_s": 0}))
    )
    env = _tool_env(root)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, env=env, check=True)
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    out = done.stdout + done.stderr
    assert done.returncode == 2 and "fails: Failed" in out, out[-3000:]
    assert (root / "attempts.log").read_text().count("x") == 3  # the first attempt and 2 retries
    spans = sorted(
        (float(t0), float(t1)) for _, t0, t1 in (line.split() for line in (root / "spans.log").read_text().splitlines())
    )
    assert len(spans) == 3
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, f"two stages ran at once with flow.max_parallel 1: {spans}"
