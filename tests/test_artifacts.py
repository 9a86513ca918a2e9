import json

import numpy as np
import pytest
import zarr

from store.artifacts import IncompleteArtifactError, open_store, summarize, write_json, write_store


def _write(path, value, fail=False):
    with write_store(path, "unit", {"k": value}, f"h{value}", note="x") as group:
        arr = group.create_array("values", shape=(10, 2), chunks=(4, 2), dtype="float32")
        arr[:] = value
        if fail:
            raise RuntimeError("crash mid-write")


def test_round_trip_with_provenance(tmp_path):
    path = tmp_path / "a.zarr"
    _write(path, 3.0)
    group = open_store(path)
    np.testing.assert_array_equal(group["values"][:], np.full((10, 2), 3.0, np.float32))
    attrs = dict(group.attrs)
    assert attrs["complete"] is True and attrs["stage"] == "unit" and attrs["params_hash"] == "h3.0"
    assert attrs["params"] == {"k": 3.0} and attrs["note"] == "x"
    assert attrs["git_rev"] and attrs["created"]
    assert group["values"].chunks == (4, 2)


def test_crash_leaves_previous_store_untouched(tmp_path):
    path = tmp_path / "a.zarr"
    _write(path, 1.0)
    with pytest.raises(RuntimeError, match="crash"):
        _write(path, 2.0, fail=True)
    assert open_store(path)["values"][0, 0] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]  # no temp leftovers


def test_crash_on_first_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        _write(tmp_path / "a.zarr", 2.0, fail=True)
    assert list(tmp_path.iterdir()) == []


def test_incomplete_store_is_refused(tmp_path):
    path = tmp_path / "half.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.attrs.update({"stage": "faces", "complete": False})
    group.create_array("values", shape=(2,), dtype="f4")
    with pytest.raises(IncompleteArtifactError, match="incomplete.*faces"):
        open_store(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_store(tmp_path / "missing.zarr")


def test_summarize_lists_nested_arrays(tmp_path):
    path = tmp_path / "a.zarr"
    with write_store(path, "unit", {}, "h") as group:
        group.create_array("top", shape=(5, 3), chunks=(2, 3), dtype="uint8")
        group.create_array("gt/depth", shape=(4, 8, 8), chunks=(2, 8, 8), dtype="float32")
    rows = {r["array"]: r for r in summarize(path)}
    assert rows["top"]["shape"] == (5, 3) and rows["gt/depth"]["chunks"] == (2, 8, 8)
    assert all(r["complete"] and r["stage"] == "unit" for r in rows.values())


def test_write_json_atomic(tmp_path):
    write_json(tmp_path / "m" / "x.json", {"b": 1, "a": 2})
    assert json.loads((tmp_path / "m" / "x.json").read_text()) == {"a": 2, "b": 1}
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["x.json"]


def test_a_rerun_removes_the_temporaries_a_killed_writer_left(tmp_path):
    """`data/.faces.zarr.tmp-PID-*` of a writer killed with SIGKILL is removed by the next write of
    that output; a temporary whose writer still runs is left alone."""
    import os
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    stale = tmp_path / f".faces.zarr.tmp-{dead}-0123abcd"
    (stale / "images").mkdir(parents=True)
    (stale / "images" / "c0").write_bytes(b"\0" * 1000)
    running = tmp_path / f".faces.zarr.tmp-{os.getpid()}-feedbeef"
    running.mkdir()
    old_style = tmp_path / ".faces.zarr.tmp-0123abcd"  # no PID in the name: not ours to judge
    old_style.mkdir()
    with write_store(tmp_path / "faces.zarr", "faces", {}, "h") as group:
        group.create_array("x", data=np.arange(3))
    assert not stale.exists() and running.exists() and old_style.exists()
    assert open_store(tmp_path / "faces.zarr")["x"][:].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name) == sorted([running.name, old_style.name])
