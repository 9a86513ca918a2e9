"""`facesem inspect`: artifacts at git revisions and `dvc exp` refs (no checkout), exports, diffs.

A tiny git + DVC repository is built once per module in a temporary folder: a one-stage
dvc.yaml writes `data/s.zarr` (with `store.artifacts.write_store`) and a metrics file
from params.yaml; commit v1 (scale 1, 8 rows), `dvc exp run -S make.scale=3 -n bigger`,
then commit v2 (scale 2, 12 rows, plus an incomplete store tracked with `dvc add`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from PIL import Image

from pipeline import cli
from pipeline.env import environment_defaults
from store.artifacts import IncompleteArtifactError
from tools import inspect_artifacts as insp

REPO = Path(__file__).resolve().parent.parent

# zarr only warns when a store's metadata cannot be read (the array then goes missing): a
# failure here (seen with concurrent DVCFileSystem reads, see tools.inspect_artifacts.Source)
pytestmark = pytest.mark.filterwarnings("error::zarr.errors.ZarrUserWarning")

MAKE = textwrap.dedent(f"""\
    import sys
    sys.path.insert(0, {str(REPO)!r})
    import numpy as np, yaml
    from store.artifacts import write_json, write_store

    p = yaml.safe_load(open("params.yaml"))["make"]
    s, n = p["scale"], p["n"]
    with write_store("data/s.zarr", "make", p, f"h{{s}}") as g:
        v = g.create_array("values", shape=(n, 3), chunks=(4, 3), dtype="float32")
        v[:] = s * np.arange(n * 3, dtype=np.float32).reshape(n, 3)
        v.attrs["columns"] = ["a", "b", "c"]
        u = g.create_array("unit", shape=(2, 3), chunks=(2, 3), dtype="float32")
        u[:] = s
        u.attrs["rows"] = ["yaw", "pitch"]
        im = g.create_array("images", shape=(6, 3, 8, 8), chunks=(2, 3, 8, 8), dtype="uint8")
        im[:] = np.full((6, 3, 8, 8), 40 * s, np.uint8)
        g.create_array("gt/depth", shape=(4, 5, 5), chunks=(2, 5, 5), dtype="float32")[:] = s
    write_json("data/metrics/m.json", {{"loss": 1.0 / s, "eval": {{"acc": 0.25 * s}}, "loss_space": "x"}})
""")

DVC_YAML = textwrap.dedent(f"""\
    stages:
      make:
        cmd: {sys.executable} make.py
        deps: [make.py]
        params: [make]
        outs: [data/s.zarr]
        metrics:
          - data/metrics/m.json:
              cache: false
""")


def _params(scale: int, n: int) -> str:
    return f"make:\n  scale: {scale}\n  n: {n}\n"


def _run(root: Path, *cmd: str) -> str:
    return subprocess.run(cmd, cwd=root, check=True, capture_output=True, text=True).stdout


def _dvc(root: Path, *args: str) -> str:
    return _run(root, sys.executable, "-m", "dvc", *args)


def _commit(root: Path, message: str) -> None:
    _run(root, "git", "add", "-A")
    _run(root, "git", "commit", "-q", "-m", message)


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file of the work tree outside .git and .dvc (to check nothing changes)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not {".git", ".dvc"} & set(p.relative_to(root).parts)
    }


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect") / "repo"
    root.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in environment_defaults(root).items():
            mp.setenv(key, value)
        for key in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
            mp.setenv(key, "test")
        for key in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
            mp.setenv(key, "test@example.com")
        mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
        _run(root, "git", "init", "-q", "-b", "main")
        _run(root, "git", "config", "user.name", "test")
        _run(root, "git", "config", "user.email", "test@example.com")
        _dvc(root, "init", "-q")
        (root / "make.py").write_text(MAKE)
        (root / "dvc.yaml").write_text(DVC_YAML)
        (root / "params.yaml").write_text(_params(1, 8))
        _dvc(root, "repro", "-q")
        _commit(root, "v1")
        _dvc(root, "exp", "run", "-q", "-S", "make.scale=3", "-n", "bigger")
        (root / "params.yaml").write_text(_params(2, 12))
        _dvc(root, "repro", "-q")
        half = zarr.open_group(str(root / "data" / "half.zarr"), mode="w", zarr_format=3)
        half.attrs.update({"stage": "half_stage", "complete": False})
        half.create_array("x", shape=(3,), dtype="float32")[:] = 1
        _dvc(root, "add", "-q", "data/half.zarr")
        _commit(root, "v2")
        yield root


@pytest.fixture
def in_repo(repo, monkeypatch):
    """cwd and DVC environment of the test repository (for `facesem` through cli.main)."""
    monkeypatch.chdir(repo)
    for key, value in environment_defaults(repo).items():
        monkeypatch.setenv(key, value)
    return repo


def _facesem(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- pure pieces


def test_split_address():
    assert insp.split_address("faces") == ("data/faces.zarr", None)
    assert insp.split_address("faces.zarr/images") == ("data/faces.zarr", "images")
    assert insp.split_address("faces/gt/depth") == ("data/faces.zarr", "gt/depth")
    assert insp.split_address("./data/faces.zarr/gt/depth/") == ("data/faces.zarr", "gt/depth")
    assert insp.split_address("/elsewhere/x.zarr/v") == ("/elsewhere/x.zarr", "v")
    assert insp.split_address("/r/data/s.zarr/v", Path("/r")) == ("data/s.zarr", "v")


def test_array_stats_blockwise_match_numpy(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(37, 5, 4)).astype(np.float32)
    data[5, 1, 2] = np.nan
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, chunks=(4, 5, 4), dtype="float32")
    arr[:] = data
    stats = insp.array_stats(arr, budget=8 * 20 * 8)  # 8 rows (2 chunks) per block: 5 blocks
    finite = data[np.isfinite(data)].astype(np.float64)
    assert stats["nonfinite"] == 1
    assert stats["min"] == pytest.approx(finite.min()) and stats["max"] == pytest.approx(finite.max())
    assert stats["mean"] == pytest.approx(finite.mean(), rel=1e-12)
    assert stats["std"] == pytest.approx(finite.std(), rel=1e-10)
    assert [b.shape[0] for b in insp.iter_blocks(arr, budget=8 * 20 * 8)] == [8, 8, 8, 8, 5]


def test_params_and_metrics_diff_tables():
    params = insp.params_diff({"a": {"b": 1, "c": [1, 2]}, "d": 1}, {"a": {"b": 2, "c": [1, 2]}, "e": None})
    assert params.to_dict("records") == [
        {"key": "a.b", "old": 1, "new": 2},
        {"key": "d", "old": 1, "new": insp.ABSENT},
        {"key": "e", "old": insp.ABSENT, "new": None},
    ]
    metrics = insp.metrics_diff(
        {"m.json": {"x": 1.0, "y": {"z": [1, 2]}, "s": "a", "f": True}},
        {"m.json": {"x": 1.5, "y": {"z": [1, 3]}, "s": "b", "f": False}},
    )
    assert metrics[["key", "old", "new", "delta"]].to_dict("records") == [
        {"key": "x", "old": 1.0, "new": 1.5, "delta": 0.5},
        {"key": "y.z[1]", "old": 2, "new": 3, "delta": 1},
    ]


# ---------------------------------------------------------------- revisions, no checkout


def test_rev_reads_old_contents_and_leaves_work_tree_alone(in_repo, capsys):
    before = _snapshot(in_repo)
    status = _run(in_repo, "git", "status", "--porcelain")
    old = insp.open_artifact(insp.open_source(in_repo, "HEAD~1"), "data/s.zarr")
    new = insp.open_artifact(insp.open_source(in_repo), "data/s.zarr")
    assert old.attrs["params_hash"] == "h1" and new.attrs["params_hash"] == "h2"
    np.testing.assert_array_equal(old["values"][:], np.arange(24, dtype=np.float32).reshape(8, 3))
    np.testing.assert_array_equal(new["values"][:], 2 * np.arange(36, dtype=np.float32).reshape(12, 3))

    code, out, _ = _facesem(capsys, "inspect", "s/values", "--rev", "HEAD~1")
    assert code == 0
    assert "data/s.zarr at HEAD~1" in out and "params_hash  h1" in out and "complete     True" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("values"))
    assert "(8, 3)" in row and "(4, 3)" in row and " 23 " in row and "11.5" in row  # shape, chunks, max, mean
    assert '"a", "b", "c"' in out  # the array's own attributes
    code, out, _ = _facesem(capsys, "inspect", "s")
    assert code == 0 and "params_hash  h2" in out and "(12, 3)" in out and "gt/depth" in out
    assert _snapshot(in_repo) == before and _run(in_repo, "git", "status", "--porcelain") == status


def test_rev_reads_dvc_experiment(in_repo, capsys):
    code, out, _ = _facesem(capsys, "inspect", "data/s.zarr/unit", "--rev", "bigger")
    assert code == 0 and "params_hash  h3" in out and '"yaw", "pitch"' in out
    row = next(line for line in out.splitlines() if line.strip().startswith("unit"))
    assert row.split()[-5:] == ["3", "3", "3", "0", "0"]  # min max mean std nonfinite


def test_listing_work_tree_and_rev(in_repo, capsys):
    code, out, _ = _facesem(capsys, "inspect")
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == [
        "artifact",
        "array",
        "shape",
        "dtype",
        "chunks",
        "stored_mb",
        "stage",
        "params_hash",
        "complete",
    ]
    half = next(line for line in lines if line.startswith("half.zarr") or " half.zarr" in line)
    assert "half_stage" in half and half.split()[-1] == "False"
    assert any("values" in line and "make" in line and "h2" in line and line.split()[-1] == "True" for line in lines)
    code, out, _ = _facesem(capsys, "inspect", "--rev", "HEAD~1")
    assert code == 0 and out.startswith("artifacts at HEAD~1") and "half.zarr" not in out and " h1 " in out


# ---------------------------------------------------------------- diff


def test_diff_params_metrics_arrays(in_repo, capsys):
    result = insp.diff(in_repo, "HEAD~1", "HEAD")
    assert result.params.to_dict("records") == [
        {"key": "make.n", "old": 8, "new": 12},
        {"key": "make.scale", "old": 1, "new": 2},
    ]
    metrics = result.metrics.set_index("key")
    assert list(metrics.index) == ["eval.acc", "loss"]
    assert metrics.loc["loss", ["old", "new", "delta"]].tolist() == [1.0, 0.5, -0.5]
    assert metrics.loc["eval.acc", "delta"] == pytest.approx(0.25)
    arrays = result.arrays.set_index("array")
    assert arrays.loc["values", "old_shape"] == (8, 3) and arrays.loc["values", "new_shape"] == (12, 3)
    assert arrays.loc["values", "old_mean"] == pytest.approx(11.5)  # mean of 0..23
    assert arrays.loc["values", "new_mean"] == pytest.approx(35.0)  # 2 x mean of 0..35
    assert arrays.loc["values", "old_std"] == pytest.approx(np.arange(24).std())
    assert arrays.loc["images", "new_mean"] == 80 and arrays.loc["images", "changed"] == "*"
    assert any("only at HEAD" in note and "half.zarr" in note for note in result.notes)

    code, out, _ = _facesem(capsys, "inspect", "--diff", "HEAD~1", "HEAD")
    assert code == 0
    assert "params (2 changed)" in out and "metrics (data/metrics/*.json, 2 numeric values changed)" in out
    loss = next(line for line in out.splitlines() if " loss " in f" {line} ")
    assert loss.split()[-3:] == ["1", "0.5", "-0.5"]
    assert "(8, 3)" in out and "(12, 3)" in out

    # one artifact, against the work tree and against an experiment
    code, out, _ = _facesem(capsys, "inspect", "s/unit", "--diff", "bigger", "workspace")
    assert code == 0 and "old = bigger" in out and "new = work tree" in out
    unit = next(line for line in out.splitlines() if "unit" in line)
    assert unit.split()[-5:-1] == ["3", "2", "0", "0"] and "values" not in out.split("arrays")[1]


# ---------------------------------------------------------------- exports


def test_export_png_grid(in_repo, capsys, tmp_path):
    out_png = tmp_path / "old.png"
    code, out, _ = _facesem(
        capsys, "inspect", "s/images", "--rev", "HEAD~1", "--export", str(out_png), "--rows", "4", "--zoom", "2"
    )
    assert code == 0 and "4 images" in out
    with Image.open(out_png) as im:  # 2 x 2 grid of 8 px images, 1 px padding, zoomed x2
        assert im.size == (2 * (2 * 9 + 1), 2 * (2 * 9 + 1))
        pixels = np.asarray(im.convert("RGB"))
    assert pixels[4, 4].tolist() == [40, 40, 40]  # scale 1 at HEAD~1 (the work tree has 80)
    code, out, _ = _facesem(capsys, "inspect", "s/images", "--export", str(tmp_path / "all.png"))
    with Image.open(tmp_path / "all.png") as im:  # default: up to 16 rows; 6 -> 3 per row, 2 rows
        assert im.size == (3 * 9 + 1, 2 * 9 + 1)
        assert np.asarray(im.convert("RGB"))[2, 2].tolist() == [80, 80, 80]


def test_export_csv_rows_and_names(in_repo, capsys, tmp_path):
    code, out, _ = _facesem(
        capsys, "inspect", "s/values", "--rev", "HEAD~1", "--export", str(tmp_path / "v.csv"), "--rows", "5"
    )
    assert code == 0 and "5 rows x 3 columns" in out
    table = pd.read_csv(tmp_path / "v.csv", index_col="row")
    assert list(table.columns) == ["a", "b", "c"] and list(table.index) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(table.to_numpy(), np.arange(15).reshape(5, 3))
    code, out, _ = _facesem(capsys, "inspect", "s/unit", "--export", str(tmp_path / "u.csv"))
    table = pd.read_csv(tmp_path / "u.csv", index_col="row")
    assert list(table.index) == ["yaw", "pitch"] and table.to_numpy().tolist() == [[2.0] * 3] * 2


def test_a_fresh_clone_reads_old_versions_from_a_remote_and_pulls(repo, capsys, tmp_path, monkeypatch):
    """`dvc push` to a (directory) remote; a git clone with an empty DVC cache then inspects an
    old version straight from the remote, and `dvc pull` restores the work tree's artifacts."""
    remote = tmp_path / "remote"
    _dvc(repo, "remote", "add", "--local", "-d", "store", str(remote))
    try:
        _dvc(repo, "push", "-q", "--all-commits")
    finally:
        _dvc(repo, "remote", "remove", "--local", "store")
    clone = tmp_path / "clone"
    _run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    for key, value in environment_defaults(clone).items():
        monkeypatch.setenv(key, value)
    _dvc(clone, "remote", "add", "--local", "-d", "store", str(remote))
    assert not (clone / "data" / "s.zarr").exists() and not (clone / ".dvc" / "cache").exists()
    monkeypatch.chdir(clone)
    code, out, _ = _facesem(capsys, "inspect", "s/values", "--rev", "HEAD~1", "--export", str(tmp_path / "v.csv"))
    assert code == 0, out
    table = pd.read_csv(tmp_path / "v.csv", index_col="row")
    np.testing.assert_array_equal(table.to_numpy(), np.arange(24).reshape(8, 3))  # v1, scale 1
    _dvc(clone, "pull", "-q")
    pulled = zarr.open_group(str(clone / "data" / "s.zarr"), mode="r")
    assert pulled.attrs["params_hash"] == "h2"
    np.testing.assert_array_equal(pulled["values"][:], 2 * np.arange(36, dtype=np.float32).reshape(12, 3))


# ---------------------------------------------------------------- errors name what is at fault


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nope"], "unknown artifact 'data/nope.zarr' at work tree (artifacts there: data/half.zarr, data/s.zarr)"),
        (
            ["s/nope", "--rev", "HEAD~1"],
            "unknown array 'nope' in data/s.zarr at HEAD~1 (*) (arrays there: gt/depth, images, unit, values)",
        ),
        (["s", "--rev", "no-such-rev"], "unknown revision 'no-such-rev'"),
        (["--diff", "HEAD", "no-such-rev"], "unknown revision 'no-such-rev'"),
        (["half"], "artifact data/half.zarr at work tree is incomplete"),
        (["half/x", "--rev", "HEAD"], "artifact data/half.zarr at HEAD"),
        (["s/values", "--export", "x.png"], "data/s.zarr/values at work tree is float32 (12, 3): a PNG export needs"),
        (["s/images", "--export", "x.csv"], "a CSV export needs a 1-D or 2-D array"),
        (["s", "--export", "x.csv"], "--export needs an array"),
        (["s/values", "--export", "x.txt"], "unknown format '.txt'"),
    ],
)
def test_errors(in_repo, capsys, argv, message):
    code, out, err = _facesem(capsys, "inspect", *argv)
    head, _, tail = message.partition("(*)")  # (*): the short commit id
    assert code == 2 and err.startswith("error: ") and head in err and tail in err, err
    assert not (in_repo / "x.png").exists() and not (in_repo / "x.csv").exists()


def test_incomplete_is_refused_but_listed(in_repo):
    with pytest.raises(IncompleteArtifactError, match="incomplete.*half_stage"):
        insp.open_artifact(insp.open_source(in_repo, "HEAD"), "data/half.zarr")
    rows, errors = insp.listing(insp.open_source(in_repo, "HEAD"))
    assert errors == []
    assert rows.set_index("artifact").loc["half.zarr", "complete"] == False  # noqa: E712
    assert json.loads((in_repo / "data" / "metrics" / "m.json").read_text())["loss"] == 0.5
