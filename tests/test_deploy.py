"""Deployment files, checked without Docker or a cluster: prefect.yaml as `prefect deploy`
reads it (a real flow, valid parameters, valid cron, the GPU request), the Dockerfile installs
with the Makefile's recipe, .dockerignore keeps the sources and drops local state, and
`facesem serve` (a dry run, and one scheduled run against a local Prefect server)."""

from __future__ import annotations

import io
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.env import environment_defaults
from tests.conftest import params_dict

REPO = Path(__file__).resolve().parent.parent
ENTRYPOINT = "pipeline/flow.py:facesem_flow"


def _tool_env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DVC_"))}
    env.update(environment_defaults(root))  # PREFECT_HOME and DVC state inside root, no telemetry
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(REPO)
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


# ---- prefect.yaml ---------------------------------------------------------------------------


def _prefect_yaml():
    """The deployments and actions exactly as `prefect deploy` loads them (prefect==3.8.8)."""
    from prefect.cli.deploy._config import _load_deploy_configs_and_actions
    from rich.console import Console

    messages = io.StringIO()
    configs, actions = _load_deploy_configs_and_actions(REPO / "prefect.yaml", console=Console(file=messages))
    assert messages.getvalue() == "", messages.getvalue()  # prefect deploy would skip the file
    return {c["name"]: c for c in configs}, actions


def _dockerfile() -> tuple[list[tuple[str, str]], dict[str, str]]:
    """[(INSTRUCTION, arguments)] with continuation lines joined, and the ARG defaults."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    args = dict(rest.split("=", 1) for word, rest in instructions if word == "ARG" and "=" in rest)
    return instructions, args


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), text)


def test_prefect_yaml_deployments_run_the_real_flow_with_valid_parameters():
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    from pipeline.dag import load_dag

    deployments, _ = _prefect_yaml()
    assert {"nightly-gpu", "nightly-gpu-k8s"} <= set(deployments)
    stages = set(load_dag(REPO))
    for name, config in deployments.items():
        assert config["entrypoint"] == ENTRYPOINT, name
        flow = load_flow_from_entrypoint(str(REPO / config["entrypoint"]))  # imports the file
        assert flow.name == "facesem" and flow.fn.__name__ == "facesem_flow"
        params = config["parameters"]
        validate(params, parameter_schema(flow).model_dump_for_openapi(), raise_on_error=True)
        flow.validate_parameters(params)
        assert set(params["targets"] or []) <= stages, name


def test_prefect_yaml_schedules_are_valid_crons():
    import asyncio

    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.server.schemas.schedules import CronSchedule as ServerCron

    deployments, _ = _prefect_yaml()
    for name, config in deployments.items():
        assert config["schedules"], name
        for item in config["schedules"]:
            schedule = _schedule_config_to_deployment_schedule(item)["schedule"]
            assert isinstance(schedule, CronSchedule), name
            dates = asyncio.run(ServerCron(cron=schedule.cron, timezone=schedule.timezone).get_dates(n=2))
            assert (dates[1] - dates[0]).total_seconds() == 24 * 3600  # "0 3 * * *": daily
    assert deployments["nightly-gpu"]["schedules"][0]["cron"] == "0 3 * * *"


def test_docker_deployment_requests_a_gpu_in_the_projects_image():
    from docker.types import HostConfig

    deployments, actions = _prefect_yaml()
    docker = deployments["nightly-gpu"]
    assert docker["work_pool"]["name"] == "facesem-gpu"
    jv = docker["work_pool"]["job_variables"]
    # docker-py builds the container's host config from it: `docker run --gpus 1`
    host = HostConfig(
        version="1.44", **{k: v for k, v in jv["container_create_kwargs"].items() if k == "device_requests"}
    )
    request = host["DeviceRequests"][0]
    assert request["Capabilities"] == [["gpu"]] and (request["Count"] >= 1 or request["Count"] == -1)
    assert jv["env"]["FACESEM_DEVICE"] == "cuda"
    # the image is the one the Dockerfile builds, run in its WORKDIR, results on volumes there
    instructions, _ = _dockerfile()
    workdir = [rest for word, rest in instructions if word == "WORKDIR"][-1]
    pull = actions["pull"][0]["prefect.deployments.steps.set_working_directory"]
    assert pull["directory"] == workdir
    assert {v.split(":")[1] for v in jv["volumes"]} == {f"{workdir}/data", f"{workdir}/.dvc/cache"}
    build_tag = f"docker build -t {jv['image']} ."
    assert build_tag in (REPO / "Dockerfile").read_text()
    assert build_tag in (REPO / "docs" / "operations.md").read_text()
    k8s = deployments["nightly-gpu-k8s"]["work_pool"]
    assert k8s["job_variables"]["image"].endswith(":cuda")


# ---- Dockerfile and .dockerignore -----------------------------------------------------------


def _makefile_install_recipe() -> list[str]:
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("$(VENV)/.installed:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip().lstrip("@"))
    return recipe


def test_dockerfile_installs_with_the_makefiles_recipe():
    instructions, args = _dockerfile()
    base = _expand([rest for word, rest in instructions if word == "FROM"][0], args)
    assert base.startswith(("nvidia/cuda:", "pytorch/pytorch:")), base
    runs = [_expand(rest, args) for word, rest in instructions if word == "RUN"]
    make_runs = [r for r in runs if "make install" in r]
    assert len(make_runs) == 1
    # nothing is installed beside the Makefile: no pip or venv of the Dockerfile's own
    assert not [r for r in runs if re.search(r"pip3? install|-m venv|-m pip", r)]
    # variables given to make on its command line are the Makefile's overridable ones
    overrides = dict(
        tok.split("=", 1)
        for tok in shlex.split(make_runs[0].split("make install", 1)[1])
        if "=" in tok and not tok.startswith("-")
    )
    makefile = (REPO / "Makefile").read_text()
    for name in overrides:
        assert re.search(rf"^{name}\s*\?=", makefile, re.M), f"{name} is not a `?=` variable"
    # the image's interpreter is the one the lock was resolved and tested with
    assert overrides["PYTHON"] == f"python{sys.version_info.major}.{sys.version_info.minor}"
    # what `make install` runs with those overrides: the recipe, nothing else
    dry = subprocess.run(
        ["make", "-n", "-B", "install", *[f"{k}={v}" for k, v in overrides.items()]],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    recipe = _makefile_install_recipe()
    assert any("-m pip install" in line and "-c requirements.lock" in line for line in recipe)
    for line in dry.splitlines():
        if "pip install" in line or "-m venv" in line:
            assert line.startswith((f"{overrides['PYTHON']} -m venv .venv", ".venv/bin/python -m pip")), line
    assert sum("pip install" in line for line in dry.splitlines()) == sum("pip install" in r for r in recipe)


def test_dockerfile_swaps_only_the_cpu_torch_line_for_a_cuda_build():
    instructions, args = _dockerfile()
    lock = (REPO / "requirements.lock").read_text().splitlines()
    pyproject = (REPO / "pyproject.toml").read_text()
    pinned = re.search(r'"torch==([^"]+)"', pyproject).group(1)
    assert f"torch=={pinned}+cpu" in lock  # the line the image replaces is there, once
    assert lock.count(f"torch=={pinned}+cpu") == 1
    assert args["TORCH"] == f"torch=={pinned}"  # PyPI's Linux wheel of the same version (CUDA)
    runs = [rest for word, rest in instructions if word == "RUN"]
    swap = next(r for r in runs if "sed" in r and "requirements.lock" in r)
    assert f"grep -qx 'torch=={pinned}+cpu' requirements.lock" in swap
    assert runs.index(swap) < next(i for i, r in enumerate(runs) if "make install" in r)
    assert any("torch.version.cuda" in r for r in runs)  # a CPU wheel fails the build
    assert any("core.no_scm true" in r for r in runs)  # DVC without .git in the image


def _docker_ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent of it wins."""

    def regex(pattern: str) -> re.Pattern:
        out = re.escape(pattern.strip("/"))
        out = out.replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        return re.compile(out.replace(r"\?", "[^/]") + "$")

    parts = path.split("/")
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        rx = regex(pattern.lstrip("!"))
        if any(rx.match("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


def test_dockerignore_sends_the_sources_not_the_local_state():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    kept = [
        "Makefile",
        "pyproject.toml",
        "requirements.lock",
        "dvc.yaml",
        "dvc.lock",
        "params.yaml",
        ".dvc/config",
        ".dvcignore",
        "pipeline/flow.py",
        "stages/faces.py",
        "models/renderer.py",
        "data/raw/README.md",
        "data/.gitignore",
        "prefect.yaml",
    ]
    dropped = [
        ".git/HEAD",
        ".venv/bin/python",
        ".prefect/prefect.db",
        "data/faces.zarr/zarr.json",
        "data/gan/generator.safetensors",
        ".dvc/cache/files/md5/00/ab",
        ".dvc/tmp/rwlock",
        "pipeline/__pycache__/flow.cpython-311.pyc",
        "facesem.egg-info/PKG-INFO",
        "data/raw/photo.jpg",
        ".dvc/config.local",
    ]
    assert [p for p in kept if _docker_ignored(p, patterns)] == []
    assert [p for p in dropped if not _docker_ignored(p, patterns)] == []
    for path in kept:
        assert (REPO / path).exists(), path


# ---- facesem serve --------------------------------------------------------------------------


def _serve(args: list[str], env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "serve", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_serve_dry_run_prints_the_deployment_without_a_server(tmp_path):
    home = tmp_path / "prefect-home"
    # nothing listens there: a dry run must not need it
    env = _tool_env(tmp_path, PREFECT_HOME=str(home), PREFECT_API_URL="http://127.0.0.1:9/api")
    proc = _serve(["--cron", "0 3 * * *", "--dry-run"], env)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(":", 1) for line in proc.stdout.splitlines() if ":" in line)
    assert lines["deployment"].strip() == "facesem/scheduled"
    assert lines["entrypoint"].strip() == ENTRYPOINT  # the same flow prefect.yaml deploys
    assert lines["schedule"].strip().startswith("cron '0 3 * * *' (UTC); next runs:")
    assert "T03:00:00+00:00" in lines["schedule"]
    assert lines["parameters"].strip() == '{"targets": null, "force": false}'
    assert lines["api"].strip() == "http://127.0.0.1:9/api"
    assert proc.stdout.strip().endswith("dry run: nothing was sent to a server")
    assert not home.exists() or not any(home.iterdir())  # no profile, no database written

    proc = _serve(
        ["--interval", "900", "--target", "preview", "--name", "quarter", "--timezone", "Europe/Berlin", "--dry-run"],
        env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "deployment: facesem/quarter" in proc.stdout
    assert "schedule:   every 900 s (Europe/Berlin)" in proc.stdout
    assert 'parameters: {"targets": ["preview"], "force": false}' in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cron", "0 3 * *", "--dry-run"], 'Invalid cron string: "0 3 * *"'),
        (["--cron", "0 3 * * *", "--target", "nope", "--dry-run"], "unknown stage(s) ['nope']"),
        (["--interval", "0", "--dry-run"], "argument --interval: must be a positive finite float"),
        (["--cron", "0 3 * * *"], "serving needs a Prefect server"),  # PREFECT_API_URL unset
    ],
)
def test_serve_rejects_bad_input_before_any_server(tmp_path, args, message):
    proc = _serve(args, _tool_env(tmp_path))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


def test_serve_builds_the_deployment_prefect_yaml_deploys(monkeypatch):
    from pipeline.flow import build_deployment

    monkeypatch.chdir(REPO)
    deployment = build_deployment(name="nightly", cron="0 3 * * *")
    deployments, _ = _prefect_yaml()
    assert deployment.entrypoint == deployments["nightly-gpu"]["entrypoint"]
    assert deployment.parameters == deployments["nightly-gpu"]["parameters"]
    assert deployment.schedules[0].schedule.cron == deployments["nightly-gpu"]["schedules"][0]["cron"]
    with pytest.raises(ValueError, match="not both"):
        build_deployment(cron="0 3 * * *", interval=60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_serve_runs_the_flow_on_its_schedule(tmp_path):
    """`facesem serve --interval 5` against a local `prefect server start`: a scheduled run
    executes the flow (a one-stage DVC repo) here and completes."""
    import httpx

    root = tmp_path / "repo"
    root.mkdir()
    (root / "dvc.yaml").write_text(
        yaml.safe_dump(
            {"stages": {"hello": {"cmd": 'python -c \'open("hello.txt", "w").write("hi")\'', "outs": ["hello.txt"]}}}
        )
    )
    (root / "params.yaml").write_text(yaml.safe_dump(params_dict()))
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = _tool_env(root, PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2", PREFECT_RUNNER_POLL_FREQUENCY="2")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, env=env, check=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--port", str(port), "--no-ui"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    serve = None
    try:
        deadline = time.monotonic() + 300  # a failsafe: the loop waits on readiness (health)
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "prefect server did not start"
            time.sleep(1)
        env["PREFECT_API_URL"] = api
        log = (tmp_path / "serve.log").open("w")
        serve = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "serve", "--interval", "5", "--name", "test"],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300  # a failsafe: the loop waits on a COMPLETED flow run
        runs = []
        while not runs:
            assert time.monotonic() < deadline and serve.poll() is None, (
                "no scheduled run completed:\n" + (tmp_path / "serve.log").read_text()[-3000:]
            )
            time.sleep(2)
            runs = httpx.post(
                f"{api}/flow_runs/filter", timeout=10, json={"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}
            ).json()
        assert runs[0]["deployment_id"] is not None and runs[0]["parameters"] == {"targets": None, "force": False}
        assert (root / "hello.txt").read_text() == "hi"
    finally:
        if serve is not None:
            _stop(serve)
            log.close()
        _stop(server)
