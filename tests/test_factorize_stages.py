"""Stages factorize and cluster on the linear ground-truth generator (tiny params)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from models import faces as face_model
from pipeline import cli
from stages import cluster, decompose, faces, factorize, regress, sample_latents, train_gan, train_recon
from store.artifacts import open_store
from support.generators import load_generator
from tests.conftest import tiny_linear_params


def tiny(repo_root, **fact):
    return tiny_linear_params(
        latents={"n": 96, "chunk": 32, "batch_size": 32},
        factorize={"components": 8, "iters": 30, "edit_components": 2, "edit_steps": 3, **fact},
    )


@pytest.fixture(scope="module")
def directions(tmp_path_factory):
    """The chain up to directions.zarr on tiny params (a barely trained decomposer: J is what it is)."""
    from tests.conftest import REPO

    d = tmp_path_factory.mktemp("factorize")
    p = tiny(REPO)
    faces.run(p, d / "faces.zarr", d / "r.csv", d / "m.json")
    train_gan.run(p, d / "faces.zarr", d / "gan", d / "gan_run", d / "g.json")
    gen = d / "gan" / "generator.safetensors"
    sample_latents.run(p, gen, d / "latents.zarr")
    train_recon.run(p, gen, d / "faces.zarr", d / "recon", d / "recon_run", d / "r.json")
    decompose.run(p, d / "recon" / "decomposer.safetensors", d / "latents.zarr", d / "semantics.zarr")
    regress.run(p, d / "latents.zarr", d / "semantics.zarr", d / "directions.zarr", d / "reg.json")
    return d


def test_factorize_writes_components_figures_and_truth_match(repo_root, directions, tmp_path):
    d = directions
    result = factorize.run(
        tiny(repo_root, min_norm=0.0),
        d / "directions.zarr",
        d / "latents.zarr",
        d / "gan" / "generator.safetensors",
        tmp_path / "comp.zarr",
        tmp_path / "fig",
        tmp_path / "m.json",
    )
    assert json.loads((tmp_path / "m.json").read_text()) == result
    store = open_store(tmp_path / "comp.zarr")
    k = result["kept"]
    assert k == 8 and store["unit"].shape == (k, 16) and store["U"].shape == (4 * 16 * 16, k)
    np.testing.assert_allclose(np.linalg.norm(store["unit"][:], axis=1), 1.0, atol=1e-5)
    norms = store["norms"][:]
    assert (np.diff(norms) <= 1e-7).all()  # ordered by ||u_p||
    assert store["support"].shape == (k, 1024) and store["trace"].shape[0] >= 1
    assert (tmp_path / "fig" / "maps.png").is_file() and (tmp_path / "fig" / "edits.png").is_file()
    # the truth match, recomputed from the store and the generator's exact localized directions
    gen = load_generator(d / "gan" / "generator.safetensors")
    true = gen.net.directions[[face_model.FACTOR_INDEX[n] for n in face_model.LOCAL_NAMES]].double()
    best = (true @ torch.from_numpy(store["unit"][:]).double().T).abs().max(1).values
    assert list(result["localized_best_cos"]) == list(face_model.LOCAL_NAMES)
    np.testing.assert_allclose(list(result["localized_best_cos"].values()), best.numpy(), atol=1e-4)
    assert result["localized_matched_frac"] == pytest.approx(float((best > 0.9).double().mean()), abs=1e-4)
    # a kept component can be edited by name
    code = cli.main(
        [
            "edit",
            "--direction",
            "comp00",
            "--directions",
            str(tmp_path / "comp.zarr"),
            "--generator",
            str(d / "gan" / "generator.safetensors"),
            "--out",
            str(tmp_path / "e.png"),
            "--device",
            "cpu",
        ]
    )
    assert code == 0 and (tmp_path / "e.png").is_file()
    # min_norm drops small components
    pruned = factorize.run(
        tiny(repo_root, min_norm=float(norms[2]) * 1.0001),
        d / "directions.zarr",
        d / "latents.zarr",
        d / "gan" / "generator.safetensors",
        tmp_path / "c2.zarr",
        tmp_path / "fig2",
        tmp_path / "m2.json",
    )
    assert pruned["kept"] == 2


def test_cluster_groups_and_scores_components(repo_root, directions, tmp_path):
    d = directions
    params = tiny(repo_root, min_norm=0.0)
    factorize.run(
        params,
        d / "directions.zarr",
        d / "latents.zarr",
        d / "gan" / "generator.safetensors",
        tmp_path / "comp.zarr",
        tmp_path / "fig",
        tmp_path / "m.json",
    )
    result = cluster.run(params, tmp_path / "comp.zarr", tmp_path / "clusters", tmp_path / "c.json")
    assert result["n_clusters"] == 3 and sum(result["cluster_sizes"].values()) == 8
    table = pd.read_csv(tmp_path / "clusters" / "clusters.csv")
    assert len(table) == 8 and set(table.cluster) == {1, 2, 3}
    # purity recomputed from the table: share of components whose cluster's majority region is their own
    scored = table[table.region.notna()]
    majority = scored.groupby("cluster").region.agg(lambda r: r.value_counts().index[0])
    expect = float((scored.region == scored.cluster.map(majority)).mean())
    assert result["purity"] == pytest.approx(expect, abs=1e-4)
    assert result["purity_one_cluster"] == pytest.approx(
        float(scored.region.value_counts().iloc[0] / len(scored)), abs=1e-4
    )
    for name in ("dendrogram.png", "supports.png"):
        assert (tmp_path / "clusters" / name).is_file()


def test_cluster_refuses_too_few_components(repo_root, directions, tmp_path):
    d = directions
    params = tiny(repo_root, min_norm=10.0)
    factorize.run(
        params,
        d / "directions.zarr",
        d / "latents.zarr",
        d / "gan" / "generator.safetensors",
        tmp_path / "comp.zarr",
        tmp_path / "fig",
        tmp_path / "m.json",
    )
    with pytest.raises(ValueError, match="keeps 0 component"):
        cluster.run(params, tmp_path / "comp.zarr", tmp_path / "clusters", tmp_path / "c.json")
