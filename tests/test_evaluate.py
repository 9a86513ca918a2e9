"""Stage evaluate on the linear ground-truth generator with exact measurements; peers; correlation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from models import faces as face_model
from models.decomposition import SEMANTIC_NAMES
from models.peers import best_abs_corr, ganspace, interfacegan, pearson, sefa
from stages import evaluate, faces, train_gan, train_oracle
from store.artifacts import write_store
from support.generators import load_generator
from support.params import parse_params


def test_pearson_on_a_known_correlation():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(20000, generator=g), torch.randn(20000, generator=g)
    x = torch.stack([a, torch.ones_like(a)], 1)
    y = torch.stack([0.6 * a + 0.8 * b, -a], 1)  # corr 0.6 and -1
    r = pearson(x, y)
    assert abs(float(r[0, 0]) - 0.6) < 0.01 and float(r[0, 1]) == pytest.approx(-1.0)
    assert float(r[1].abs().max()) == 0.0  # a constant column correlates with nothing


def test_peers_find_planted_structure():
    g = torch.Generator().manual_seed(1)
    d = 12
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    w = torch.randn(5000, d, generator=g) * torch.linspace(3, 0.5, d) @ basis.T  # principal axes = basis columns
    pcs = ganspace(w, 2)
    assert float((pcs @ basis[:, :2]).abs().diagonal().min()) > 0.99
    a = torch.diag(torch.linspace(5, 1, d)) @ basis.T  # A^T A has eigenvectors basis columns, eigenvalues 25..1
    assert float((sefa(a, 1, normalize=False) @ basis[:, 0]).abs()) > 0.999
    truth = basis[:, 3]
    labels = (w @ truth)[:, None] + 0.01 * torch.randn(5000, 1, generator=g)
    assert float((interfacegan(w, labels) @ truth).abs()) > 0.99
    assert float(best_abs_corr(w, torch.stack([basis[:, 0], truth]), labels)) > 0.99


@pytest.fixture(scope="module")
def linear_setup(tmp_path_factory):
    from tests.conftest import REPO

    d = tmp_path_factory.mktemp("evaluate")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["device"] = "cpu"
    raw["data"].update(n_images=64, resolution=32, n_eval=4, chunk=32, batch_size=32)
    raw["gan"].update(kind="linear", w_dim=32, resolution=16, grid=2, metric_samples=64, fid_samples=0, ppl_samples=0)
    raw["oracle"].update(epochs=1, batch_size=16, width=4)
    raw["evaluate"].update(n_samples=400, edit_samples=64, peers_k=4, batch_size=200, ganspace_samples=4000)
    params = parse_params(raw)
    faces.run(params, d / "faces.zarr", d / "r.csv", d / "m.json")
    train_gan.run(params, d / "faces.zarr", d / "gan", d / "run", d / "g.json")
    train_oracle.run(params, d / "faces.zarr", d / "oracle", d / "o.json")
    return params, d


def test_evaluate_scores_the_true_directions_as_perfect(linear_setup, tmp_path, monkeypatch):
    params, d = linear_setup
    gen = load_generator(d / "gan" / "generator.safetensors")
    cols = [face_model.FACTOR_INDEX[n] for n in SEMANTIC_NAMES]
    truth = gen.net.directions[cols]
    with write_store(tmp_path / "dir.zarr", "regress", {}, "h") as group:
        group.create_array("unit", data=truth.numpy())
        group.create_array("sigma_w", data=np.ones(14, np.float32))
        group["unit"].attrs["rows"] = list(SEMANTIC_NAMES)
    # exact measurements instead of the (tiny, inaccurate) oracle: factors of the linear generator
    monkeypatch.setattr(evaluate.Measure, "__call__", lambda self, w: self.gen.net.factors(w)[:, self.columns])
    result = evaluate.run(
        params,
        d / "gan" / "generator.safetensors",
        d / "oracle",
        tmp_path / "dir.zarr",
        tmp_path / "out",
        tmp_path / "m.json",
    )
    assert json.loads((tmp_path / "m.json").read_text()) == result
    assert set(result["table2"]) == set(SEMANTIC_NAMES) and set(result["table2"]["yaw"]) == set(SEMANTIC_NAMES)
    for name in SEMANTIC_NAMES:
        assert result["table2"][name][name] > 0.999
        assert result["linear_recovery_cos"][name] > 0.999
        assert result["peers"]["interfacegan"][name] > 0.95
        assert result["edit"][name]["target_std_per_s"] == pytest.approx(1.0, abs=0.2)  # one sigma_w per unit s
    assert result["table2_offdiag_mean_abs"] < 0.3 and set(result["peers"]) == {
        "ours",
        "ganspace",
        "sefa",
        "interfacegan",
    }
    assert set(result["oracle_r2"]) >= set(SEMANTIC_NAMES)
    table = pd.read_csv(tmp_path / "out" / "table2.csv", index_col="direction")
    assert table.loc["yaw", "yaw"] > 0.999 and "oracle_flag" in table.columns
    assert "components" not in result  # no components store given
    # the generations' pose spread: yaw = f0 + scale * (w . d) with w ~ N(0, I), so std ~ scale (400 samples)
    yaw_scale = float(gen.net.scale[face_model.FACTOR_INDEX["yaw"]])
    assert result["generated_pose_std_deg"]["yaw"] == pytest.approx(yaw_scale, rel=0.15)
    assert (tmp_path / "out" / "peers.csv").is_file() and (tmp_path / "out" / "edit.csv").is_file()


def true_directions_store(gen, path, names=SEMANTIC_NAMES, rows=None):
    """A directions store (unit rows named ``rows``, sigma_w 1) holding the generator's true directions."""
    with write_store(path, "regress", {}, "h") as group:
        group.create_array("unit", data=gen.net.directions[[face_model.FACTOR_INDEX[n] for n in names]].numpy())
        group.create_array("sigma_w", data=np.ones(len(names), np.float32))
        group["unit"].attrs["rows"] = list(rows or names)


def test_evaluate_names_the_factor_each_component_moves(linear_setup, tmp_path, monkeypatch):
    params, d = linear_setup
    gen = load_generator(d / "gan" / "generator.safetensors")
    true_directions_store(gen, tmp_path / "dir.zarr")
    local = list(face_model.LOCAL_NAMES[:3])  # components = three true localized directions, renamed
    true_directions_store(gen, tmp_path / "comp.zarr", local, ["comp00", "comp01", "comp02"])
    monkeypatch.setattr(evaluate.Measure, "__call__", lambda self, w: self.gen.net.factors(w)[:, self.columns])
    result = evaluate.run(
        params,
        d / "gan" / "generator.safetensors",
        d / "oracle",
        tmp_path / "dir.zarr",
        tmp_path / "out",
        tmp_path / "m.json",
        tmp_path / "comp.zarr",
    )
    assert [result["components"][f"comp0{i}"]["moves"] for i in range(3)] == local
    assert all(abs(c["std_per_s"]) > abs(c["runner_up_std_per_s"]) for c in result["components"].values())
    assert len(pd.read_csv(tmp_path / "out" / "components.csv")) == 3


def test_a_direction_moving_hair_colour_more_than_its_own_is_entangled(linear_setup, tmp_path, monkeypatch):
    """Entanglement counts the well-read factors beyond the 14 (here: light_y's row is the true
    hair colour direction); a factor the oracle flags as badly read does not count (light_y's
    then moves some other factor, more than light_y, which it barely moves)."""
    params, d = linear_setup
    gen = load_generator(d / "gan" / "generator.safetensors")
    true_directions_store(gen, tmp_path / "dir.zarr", [*SEMANTIC_NAMES[:-1], "hair_colour"], list(SEMANTIC_NAMES))
    monkeypatch.setattr(evaluate.Measure, "__call__", lambda self, w: self.gen.net.factors(w)[:, self.columns])
    real = evaluate.load_checkpoint
    for flagged in ([], ["hair_colour"]):

        def meta(path, flagged=flagged):
            state, info = real(path)
            return state, {**info, "flagged": flagged}

        monkeypatch.setattr(evaluate, "load_checkpoint", meta)
        args = (d / "gan" / "generator.safetensors", d / "oracle", tmp_path / "dir.zarr", tmp_path / "out")
        result = evaluate.run(params, *args, tmp_path / "m.json")
        moves_more = result["entangled"].get("light_y", {}).get("moves_more")
        assert (moves_more == "hair_colour") == (not flagged)
        assert set(result["entangled"]) <= {"light_y"}  # the 13 true directions are not entangled


def test_evaluate_with_the_real_oracle_runs_and_flags(linear_setup, tmp_path):
    params, d = linear_setup
    gen = load_generator(d / "gan" / "generator.safetensors")
    true_directions_store(gen, tmp_path / "dir.zarr")
    result = evaluate.run(
        params,
        d / "gan" / "generator.safetensors",
        d / "oracle",
        tmp_path / "dir.zarr",
        tmp_path / "out",
        tmp_path / "m.json",
    )
    # a one-epoch width-4 oracle measures little: its weak factors are flagged
    assert set(result["flagged"]) <= set(SEMANTIC_NAMES) and len(result["flagged"]) > 0
    flags = pd.read_csv(tmp_path / "out" / "table2.csv", index_col="direction")["oracle_flag"].fillna("")
    assert set(flags[flags == "flagged"].index) == set(result["flagged"])
    tangled = pd.read_csv(tmp_path / "out" / "table2.csv", index_col="direction")["entangled_moves_more"].fillna("")
    assert {d for d, other in tangled.items() if other} == set(result["entangled"])


def test_sefa_reads_every_modulated_layers_style_affine():
    from support.generators import LatentGenerator, build_stylegan

    G, _ = build_stylegan(
        {"z_dim": 8, "w_dim": 8, "mapping_layers": 1, "resolution": 8, "channel_base": 64, "channel_max": 16}
    )
    weights = LatentGenerator(G, "stylegan2", {}).modulation_weights()
    layers = [G.synthesis.b4.conv1, G.synthesis.b8.conv0, G.synthesis.b8.conv1]  # not the toRGBs
    assert [a.shape for a in weights] == [(16, 8), (16, 8), (8, 8)]
    w = torch.randn(3, 8)
    for a, layer in zip(weights, layers):  # each is the linear part of w -> that layer's styles
        torch.testing.assert_close(layer.affine(w) - layer.affine(torch.zeros(1, 8)), w @ a.T)


def test_sefa_normalises_rows_and_ganspace_streams_its_covariance():
    from models.peers import ganspace_streaming

    g = torch.Generator().manual_seed(2)
    basis = torch.linalg.qr(torch.randn(6, 6, generator=g))[0]
    loud = torch.cat([basis[:, :1].T * 100.0, basis[:, 1:2].T.repeat(5, 1)])  # one loud row, five quiet ones
    assert float((sefa(loud, 1, normalize=False) @ basis[:, 0]).abs()) > 0.999  # the loud row dominates
    assert float((sefa(loud, 1) @ basis[:, 1]).abs()) > 0.999  # unit rows: five votes beat one
    w = torch.randn(20000, 6, generator=g) * torch.linspace(3, 0.5, 6) @ basis.T + 5.0
    streamed = ganspace_streaming(lambda m: w[torch.randint(0, len(w), (m,), generator=g)], 20000, 2, batch=3000)
    assert float((streamed @ basis[:, :2]).abs().diagonal().min()) > 0.99
    assert float((streamed @ ganspace(w, 2).T).abs().diagonal().min()) > 0.999
