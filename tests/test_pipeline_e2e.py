"""End to end, in a temporary copy of the repo on tiny params: `dvc repro`, the Prefect flow,
no-op second runs, and a param change that re-runs only the affected stage."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.env import environment_defaults

pytestmark = pytest.mark.slow

TINY = {
    "device": "cpu",
    "data": {"n_images": 48, "resolution": 32, "n_eval": 8, "chunk": 16, "batch_size": 16},
    "preview": {"grid": 4, "scale": 1},
    "gan": {
        "init": "scratch",
        "kimg": 0.032,
        "snapshot_kimg": 0.016,
        "batch_size": 8,
        "decorr_batch_size": 32,
        "channel_base": 128,
        "channel_max": 16,
        "mapping_layers": 2,
        "z_dim": 16,
        "w_dim": 16,
        "resolution": 16,
        "grid": 2,
        "metric_samples": 64,
        "fid_samples": 0,
        "ppl_samples": 0,
    },
    "latents": {"n": 32, "chunk": 16, "batch_size": 16},
    "oracle": {"epochs": 1, "batch_size": 16, "width": 4},
    "recon": {
        "resolution": 16,
        "nf_map": 4,
        "zdim_map": 8,
        "nf_encoder": 4,
        "nf_conf": 4,
        "zdim_conf": 8,
        "steps": 4,
        "batch_size": 4,
        "snapshot_steps": 2,
        "n_eval": 8,
        "eval_batch": 8,
        "panel_images": 2,
        "allow_degenerate": True,
    },  # a 4-step net is not judged
    "evaluate": {"n_samples": 64, "edit_samples": 8, "peers_k": 2, "batch_size": 64, "ganspace_samples": 2000},
    "factorize": {"components": 4, "iters": 10, "edit_components": 1, "edit_steps": 3, "min_norm": 0.0},
    "flow": {"max_parallel": 2},
}  # independent tiny stages run concurrently
# every stage dvc.yaml declares (TINY must keep them all tiny)
STAGES = tuple(yaml.safe_load((Path(__file__).resolve().parent.parent / "dvc.yaml").read_text())["stages"])


def _run(cmd, cwd, env, check=True):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _set_params(root: Path, overrides: dict) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in overrides.items():
        if isinstance(values, dict):
            params[section].update(values)
        else:
            params[section] = values
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


NET_GUARD = """
# Test-only: every process of the e2e run refuses network access beyond this machine and logs the try.
import os, socket
_LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "attempts.log")
_LOCAL = ("localhost", "127.", "::1", "0.0.0.0")
def _local(host):
    return isinstance(host, str) and (host == "" or host.startswith(_LOCAL))
def _refuse(what):
    with open(_LOG, "a") as fh:
        fh.write(f"{os.getpid()} {what}\\n")
    raise OSError(f"network access blocked in this test: {what}")
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo
def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        _refuse(f"connect {address}")
    return _connect(self, address)
def getaddrinfo(host, *args, **kwargs):
    if host is not None and not _local(host if isinstance(host, str) else host.decode()):
        _refuse(f"resolve {host}")
    return _getaddrinfo(host, *args, **kwargs)
socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
"""


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    """A git + DVC copy of the project's tracked and unignored files, with tiny params."""
    root, env, guard = copy_project(tmp_path_factory.mktemp("repo"), TINY)
    yield root, env
    log = guard / "attempts.log"
    assert not log.exists(), f"a process tried to reach the network:\n{log.read_text()}"
    # the ephemeral Prefect server is a child of each flow process and exits with it


def copy_project(root: Path, params: dict, files_in: dict[str, Path] | None = None):
    """Copy the project's tracked and unignored files into `root` (plus `files_in`: {relative
    path: source file}), set `params`, make it a git repo; every process started with the
    returned env refuses network access (logged in guard/attempts.log). Returns (root, env, guard)."""
    src = Path(__file__).resolve().parent.parent
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=src,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for rel in filter(None, files):
        if (src / rel).is_file() and (
            not rel.startswith("data/") or rel.endswith("README.md") or rel.startswith("data/shipped/")
        ):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, root / rel)
    for rel, source in (files_in or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, root / rel)
    _set_params(root, params)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DVC_"))}
    env.update(environment_defaults(root))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    guard = root.parent / "netguard"  # outside the repo: git and DVC never see it
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NET_GUARD)
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(guard)])  # the copy's packages, not the editable install's
    probe = _run(
        [sys.executable, "-c", "import socket; socket.create_connection(('192.0.2.1', 9), timeout=1)"],
        root,
        env,
        check=False,
    )
    assert "network access blocked" in probe.stderr, probe.stderr  # the guard is active in every process
    (guard / "attempts.log").unlink()
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny"],
    ):
        _run(cmd, root, env)
    return root, env, guard


def _dvc(root, env, *args):
    return _run([sys.executable, "-m", "dvc", *args], root, env)


def _flow(root, env):
    proc = _run([sys.executable, "-m", "pipeline.cli", "run"], root, env)
    states = dict(line.split() for line in proc.stdout.strip().splitlines()[-len(STAGES) :])
    return states, proc


def test_dvc_repro_then_flow_then_param_change(tiny_repo):
    root, env = tiny_repo
    first = _dvc(root, env, "repro")
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first.stdout
    faces = root / "data" / "faces.zarr"
    from store.artifacts import open_store

    group = open_store(faces)
    assert group["images"].shape == (48, 3, 32, 32) and group["gt/depth"].shape[0] == 8
    assert group.attrs["params"]["n_images"] == 48
    assert (root / "data" / "previews" / "faces.png").stat().st_size > 0
    metrics = json.loads((root / "data" / "metrics" / "faces.json").read_text())
    assert metrics["n_images"] == 48
    assert abs(metrics["factor_std"]["yaw"] - metrics["yaw_std_deg"]) < 0.01 and metrics["factor_std"]["roll"] > 0
    assert group["gt/depth"].shape[1:] == (1, 32, 32)  # [n, 1, r, r], as semantics.zarr's depth
    semantics = open_store(root / "data" / "semantics.zarr")
    assert semantics["semantics"].shape == (32, 14) and semantics["depth"].shape == (32, 1, 16, 16)
    recon = json.loads((root / "data" / "metrics" / "recon.json").read_text())
    assert recon["steps"] == 4 and {"side", "mad_deg", "yaw_mae_deg", "yaw_mae_extreme_deg"} <= set(recon)
    evaluation = json.loads((root / "data" / "metrics" / "evaluate.json").read_text())
    assert len(evaluation["table2"]) == 14 and set(evaluation["peers"]) == {"ours", "ganspace", "sefa", "interfacegan"}
    fact = json.loads((root / "data" / "metrics" / "factorize.json").read_text())
    assert fact["kept"] == 4 and open_store(root / "data" / "components.zarr")["unit"].shape == (4, 16)
    clusters = json.loads((root / "data" / "metrics" / "cluster.json").read_text())
    assert clusters["n_clusters"] == 3 and 0 < clusters["purity"] <= 1
    assert set(evaluation["components"]) == {"comp00", "comp01", "comp02", "comp03"}
    page = (root / "data" / "report" / "index.html").read_text()
    assert "Table 2, extended" in page and 'class="missing"' not in page
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)

    # a second dvc repro changes nothing
    again = _dvc(root, env, "repro")
    assert "Running stage" not in again.stdout
    assert json.loads(_dvc(root, env, "status", "--json").stdout or "{}") == {}

    # the Prefect flow agrees with DVC: both stages cached
    states, _ = _flow(root, env)
    assert states == {stage: "Cached" for stage in STAGES}

    # a factorize-only param change re-runs only factorize and what reads its output, through the flow
    _set_params(root, {"factorize": {"alpha": 0.01}})
    states, proc = _flow(root, env)
    rerun = {"factorize", "cluster", "evaluate", "report"}
    assert states == {stage: "Completed" if stage in rerun else "Cached" for stage in STAGES}, proc.stdout[-2000:]
    assert json.loads(_dvc(root, env, "status", "--json").stdout or "{}") == {}
    # Prefect kept its state inside the copy, not in the user's home
    assert (root / ".prefect").is_dir()
    # the report's headline tables were published as an artifact of the flow run
    import sqlite3

    with sqlite3.connect(root / ".prefect" / "prefect.db") as db:
        rows = db.execute("SELECT data FROM artifact WHERE key = 'facesem-report'").fetchall()
    assert rows and "Table 2 (diagonal)" in rows[-1][0]


def test_a_real_portrait_is_projected_and_edited_along_the_pipelines_directions(tiny_repo, tmp_path):
    """The real-photo path on the run's own outputs: photo -> align -> project -> edit (yaw)."""
    import skimage.data
    from PIL import Image

    root, env = tiny_repo
    if not (root / "data" / "directions.zarr").exists():
        _dvc(root, env, "repro")
    photo = tmp_path / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(photo)
    facesem = [sys.executable, "-m", "pipeline.cli"]
    proc = _run(
        [*facesem, "project", str(photo), "--out", str(tmp_path / "w.zarr"), "--steps", "3", "--json"], root, env
    )
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["n"] == 1 and summary["steps"] == 3 and np.isfinite(summary["psnr_db"])
    out = tmp_path / "edit.jpg"
    _run([*facesem, "edit", "--direction", "yaw", "--latent", str(tmp_path / "w.zarr"), "--out", str(out)], root, env)
    with Image.open(out) as grid:
        assert grid.format == "JPEG" and grid.size[0] > grid.size[1]  # one row: generation + 7 edits


def test_dask_sharded_stages_equal_the_single_process_run(tiny_repo):
    """sample_latents and decompose as 2 shard tasks each on a local Dask cluster (2 worker
    processes), writing disjoint regions of one Zarr store: the same arrays as the
    single-process `dvc repro` above, and DVC agrees the stages are up to date afterwards."""
    root, env = tiny_repo
    from store.artifacts import open_store

    _dvc(root, env, "repro", "decompose")  # its own state: a no-op when an earlier test left it up to date
    stores = {"latents.zarr": ("z", "w", "images"), "semantics.zarr": ("semantics", "depth", "albedo")}
    before = {(s, a): open_store(root / "data" / s)[a][:] for s, arrays in stores.items() for a in arrays}
    for store in stores:
        shutil.rmtree(root / "data" / store)
    flow = yaml.safe_load((root / "params.yaml").read_text())["flow"]
    _set_params(root, {"flow": {"task_runner": "dask", "dask_workers": 2, "shards": 2}})
    try:
        proc = _run([sys.executable, "-m", "pipeline.cli", "run", "--target", "decompose"], root, env)
    finally:
        _set_params(root, {"flow": flow})  # leave no state for the next test
    assert "decompose-1of2" in proc.stdout + proc.stderr  # the shard tasks ran as tasks of the flow
    for (store, array), expected in before.items():
        np.testing.assert_allclose(
            open_store(root / "data" / store)[array][:], expected, rtol=0, atol=1e-6, err_msg=f"{store}/{array}"
        )
    status = json.loads(_dvc(root, env, "status", "decompose", "--json").stdout or "{}")
    assert status == {}, status


def test_decorrelation_ablation_is_a_dvc_experiment(tiny_repo):
    """Issue 3's Table 1 row: `dvc exp run -S gan.decorr_weight=0 train_gan` trains the same GAN (same seed)
    without Eq. 1, and `dvc exp show` puts both rows' metrics next to decorr_weight. Runs last: the
    experiment's results stay in the workspace, as DVC does."""
    root, env = tiny_repo
    base_weight = yaml.safe_load((root / "params.yaml").read_text())["gan"]["decorr_weight"]
    assert base_weight > 0
    _dvc(root, env, "repro", "train_gan")
    base = json.loads((root / "data" / "metrics" / "gan.json").read_text())
    _dvc(root, env, "exp", "run", "-q", "-S", "gan.decorr_weight=0", "-n", "no-decorr", "train_gan")
    ablation = json.loads((root / "data" / "metrics" / "gan.json").read_text())
    assert yaml.safe_load((root / "params.yaml").read_text())["gan"]["decorr_weight"] == 0
    assert {"mean_abs_rho", "mean_abs_rho_space", "kimg"} <= set(ablation) and ablation["kimg"] == base["kimg"]
    assert ablation["mean_abs_rho"] != base["mean_abs_rho"]  # same seed, different loss: a different G

    def rows(node):  # every (name, params, metrics) in `dvc exp show --json`, baseline and experiments
        if isinstance(node, dict):
            if "data" in node and isinstance(node["data"], dict) and "params" in node["data"]:
                data = node["data"]
                yield (
                    node.get("name") or data.get("name") or data.get("rev"),
                    data["params"]["params.yaml"]["data"]["gan"]["decorr_weight"],
                    data["metrics"].get("data/metrics/gan.json", {}).get("data", {}),
                )
            for value in node.values():
                yield from rows(value)
        elif isinstance(node, list):
            for value in node:
                yield from rows(value)

    shown = list(rows(json.loads(_dvc(root, env, "exp", "show", "--json").stdout)))
    named = [row for row in shown if row[0] == "no-decorr"]
    assert named and named[0][1] == 0 and named[0][2]["mean_abs_rho"] == ablation["mean_abs_rho"], shown
