"""Stage regress: planted linear semantics are recovered, streaming equals in memory, ridge path."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import yaml

from models.decomposition import SEMANTIC_NAMES
from models.linear_semantics import NormalEquations, pair_differences, regress_directions, stream_pairs, unit
from stages import regress
from store.artifacts import open_store, write_store
from support.params import parse_params


def tiny(repo_root, **over):
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    raw["regress"].update(chunk=64, **over)
    return parse_params(raw)


def planted(tmp_path, n=600, d=24, r=4, noise=0.01, seed=0):
    """latents.zarr / semantics.zarr with y = w A + noise (semantics and every map pixel)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, d, generator=g) * 0.7 + 0.3
    s = 4 * r * r
    a = torch.randn(d, 14 + s, generator=g)
    y = w @ a + noise * torch.randn(n, 14 + s, generator=g)
    with write_store(tmp_path / "lat.zarr", "sample_latents", {}, "h") as group:
        group.create_array("w", data=w.numpy(), chunks=(64, d))
    with write_store(tmp_path / "sem.zarr", "decompose", {}, "h") as group:
        group.create_array("semantics", data=y[:, :14].numpy(), chunks=(64, 14))
        group["semantics"].attrs["columns"] = list(SEMANTIC_NAMES)
        group.create_array("depth", data=y[:, 14 : 14 + r * r].reshape(n, 1, r, r).numpy(), chunks=(64, 1, r, r))
        group.create_array("albedo", data=y[:, 14 + r * r :].reshape(n, 3, r, r).numpy(), chunks=(64, 3, r, r))
    return w, a


@pytest.mark.parametrize("scheme", ["random", "reference", "consecutive"])
def test_planted_directions_and_jacobian_are_recovered(repo_root, tmp_path, scheme):
    w, a = planted(tmp_path)
    result = regress.run(
        tiny(repo_root, scheme=scheme),
        tmp_path / "lat.zarr",
        tmp_path / "sem.zarr",
        tmp_path / "dir.zarr",
        tmp_path / "m.json",
    )
    out = open_store(tmp_path / "dir.zarr")
    v, jac = torch.from_numpy(out["directions"][:]), torch.from_numpy(out["jacobian"][:])
    cos = torch.nn.functional.cosine_similarity(v, a[:, :14].T, dim=1)
    assert cos.min() > 0.99
    torch.testing.assert_close(jac, a[:, 14:].T, atol=0.01, rtol=0.01)
    assert min(result["r2"].values()) > 0.99 and list(out["r2"].attrs["rows"]) == list(SEMANTIC_NAMES)
    torch.testing.assert_close(torch.from_numpy(out["unit"][:]).norm(dim=1), torch.ones(14))
    # sigma_w is the std of w . v_hat over all samples
    ref = (w.double() @ unit(v.double()).T).std(0)
    torch.testing.assert_close(torch.from_numpy(out["sigma_w"][:]).double(), ref, rtol=1e-4, atol=1e-6)
    assert out["jacobian"].attrs["layout"]["albedo"] == [3, 4, 4]


def test_streaming_equals_in_memory():
    g = torch.Generator().manual_seed(1)
    w, y = torch.randn(203, 9, generator=g).double(), torch.randn(203, 5, generator=g).double()
    for scheme in ("reference", "consecutive"):
        eq = NormalEquations(9, 5)
        blocks = [(w[i : i + 50], y[i : i + 50]) for i in range(0, 203, 50)]  # last block: 3 rows
        for dw, dy in stream_pairs(blocks, scheme):
            eq.add(dw, dy)
        dw, dy = pair_differences(w, y, scheme)
        assert eq.n == len(dw) == 202
        torch.testing.assert_close(eq.solve(), regress_directions(dw, dy))
        v = eq.solve()
        r2 = 1 - ((dy - dw @ v) ** 2).sum(0) / ((dy - dy.mean(0)) ** 2).sum(0)
        torch.testing.assert_close(eq.r2(v), r2)
    # random: pairs within each chunk, a chunk of one sample pairs with the previous chunk's last
    pairs = list(stream_pairs([(w[:4], y[:4]), (w[4:5], y[4:5])], "random", torch.Generator().manual_seed(0)))
    assert [len(p[0]) for p in pairs] == [4, 1]
    torch.testing.assert_close(pairs[1][0], w[4:5] - w[3:4])


def test_too_few_pairs_warn_and_use_a_ridge(repo_root, tmp_path):
    planted(tmp_path, n=20, d=24)
    with pytest.warns(RuntimeWarning, match="N = .* <= d = 24"):
        result = regress.run(
            tiny(repo_root), tmp_path / "lat.zarr", tmp_path / "sem.zarr", tmp_path / "d.zarr", tmp_path / "m.json"
        )
    assert np.isfinite(open_store(tmp_path / "d.zarr")["directions"][:]).all() and result["n_pairs"] == 20
    # an explicit ridge: no warning, and a smaller solution
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        regress.run(
            tiny(repo_root, ridge=10.0),
            tmp_path / "lat.zarr",
            tmp_path / "sem.zarr",
            tmp_path / "r.zarr",
            tmp_path / "m.json",
        )
    small = np.linalg.norm(open_store(tmp_path / "r.zarr")["directions"][:])
    assert small < np.linalg.norm(open_store(tmp_path / "d.zarr")["directions"][:])


def test_mismatched_stores_are_refused(repo_root, tmp_path):
    planted(tmp_path, n=128)
    with write_store(tmp_path / "lat2.zarr", "sample_latents", {}, "h") as group:
        group.create_array("w", data=np.zeros((100, 24), np.float32), chunks=(64, 24))
    with pytest.raises(ValueError, match="semantics.zarr has 128 rows, latents.zarr 100"):
        regress.run(
            tiny(repo_root), tmp_path / "lat2.zarr", tmp_path / "sem.zarr", tmp_path / "d.zarr", tmp_path / "m.json"
        )


def _planted_with(tmp_path, edit):
    """The planted stores with the semantics array edited in place by ``edit(y [n, 14])``."""
    import zarr

    w, a = planted(tmp_path)
    sem = zarr.open_group(str(tmp_path / "sem.zarr"), mode="r+")
    y = sem["semantics"][:]
    edit(y)
    sem["semantics"][:] = y
    return w, a


def test_a_constant_semantic_is_flagged_with_undefined_r2(repo_root, tmp_path):
    def constant(y):
        y[:, SEMANTIC_NAMES.index("roll")] = 3.0

    _planted_with(tmp_path, constant)
    result = regress.run(
        tiny(repo_root), tmp_path / "lat.zarr", tmp_path / "sem.zarr", tmp_path / "dir.zarr", tmp_path / "m.json"
    )
    assert result["r2"]["roll"] is None and "constant" in result["flagged"]["roll"]
    assert result["r2"]["yaw"] > 0.99 and list(result["flagged"]) == ["roll"]
    store = open_store(tmp_path / "dir.zarr")
    assert np.isnan(store["r2"][SEMANTIC_NAMES.index("roll")]) and "roll" in store.attrs["flagged"]
    assert np.abs(store["directions"][SEMANTIC_NAMES.index("roll")]).max() < 1e-6
    import json

    assert json.loads((tmp_path / "m.json").read_text())["r2"]["roll"] is None  # valid JSON, no NaN


def test_non_finite_measurements_are_dropped_counted_and_never_reach_a_direction(repo_root, tmp_path, caplog):
    def holes(y):
        y[7, SEMANTIC_NAMES.index("yaw")] = np.nan
        y[130, SEMANTIC_NAMES.index("pitch")] = np.inf

    w, a = _planted_with(tmp_path, holes)
    with caplog.at_level("WARNING"):
        result = regress.run(
            tiny(repo_root), tmp_path / "lat.zarr", tmp_path / "sem.zarr", tmp_path / "dir.zarr", tmp_path / "m.json"
        )
    assert result["n_dropped"] == 2 and "2 of 600 samples" in caplog.text and "[7, 130]" in caplog.text
    store = open_store(tmp_path / "dir.zarr")
    for name in ("directions", "unit", "sigma_w", "r2"):
        assert np.isfinite(store[name][:]).all(), name
    assert store.attrs["n_dropped"] == 2 and store.attrs["dropped_first"] == [7, 130]
    cos = (unit(torch.from_numpy(store["directions"][:]).double()) * unit(a[:, :14].T.double())).sum(1).abs()
    assert float(cos.min()) > 0.99  # the rest still recovers every planted direction
