"""`facesem dag`, `facesem params` and `facesem stage --force` on a small DVC project of their own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import params_dict
from tests.test_flow_options import DVC_YAML, _tool_env


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (root / "params.yaml").write_text(yaml.safe_dump(params_dict(flow={"retries": 1})))
    env = _tool_env(root)
    env["SLOW_S"] = "0"
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, env=env, check=True)
    return root, env


def facesem(project, *args):
    root, env = project
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def test_dag_lists_every_stage_with_its_upstream(project):
    out = facesem(project, "dag")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["quick <- (source)", "slow <- quick", "after <- slow"]


def test_params_prints_the_resolved_values_and_names_a_bad_key(project):
    out = facesem(project, "params")
    assert out.returncode == 0, out.stderr
    resolved = json.loads(out.stdout)
    assert resolved["flow"]["retries"] == 1 and resolved["recon"]["steps"] == 2000  # the whole file
    root, _ = project
    (root / "params.yaml").write_text(yaml.safe_dump(params_dict(gan={"kimg": float("inf")})))
    out = facesem(project, "params")
    assert out.returncode == 2 and "gan.kimg: Input should be a finite number" in out.stderr


def test_stage_runs_one_stage_and_force_reruns_it(project):
    root, _ = project
    first = facesem(project, "stage", "quick")
    assert first.returncode == 0, first.stderr
    assert (root / "quick.txt").read_text() == "done" and not (root / "slow.txt").exists()
    (root / "quick.txt").write_text("edited")  # DVC would restore this from its cache; --force re-runs the cmd
    again = facesem(project, "stage", "quick", "--force")
    assert again.returncode == 0, again.stderr
    assert (root / "quick.txt").read_text() == "done" and "Running stage 'quick'" in again.stdout + again.stderr
    missing = facesem(project, "stage", "nope")
    assert missing.returncode != 0 and "nope" in missing.stdout + missing.stderr


def test_bad_params_stop_a_stage_before_dvc_removes_its_output(project):
    """`facesem stage` checks params.yaml first: a bad value or a YAML syntax error is named and
    the stage's earlier output stays (DVC would remove it before running the command)."""
    root, _ = project
    assert facesem(project, "stage", "quick").returncode == 0
    good = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(yaml.safe_dump(params_dict(data={"n_images": -1})))
    out = facesem(project, "stage", "quick", "--force")
    assert out.returncode == 2 and "data.n_images" in out.stderr and "Traceback" not in out.stderr
    assert (root / "quick.txt").read_text() == "done"
    (root / "params.yaml").write_text(good.replace("n_images:", "n_images: [24000\n  oops:", 1))
    for command in (["stage", "quick"], ["params"]):
        out = facesem(project, *command)
        assert out.returncode == 2 and "params.yaml is not valid YAML" in out.stderr and "line" in out.stderr
        assert "Traceback" not in out.stderr
    assert (root / "quick.txt").read_text() == "done"
