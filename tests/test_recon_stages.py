"""Stages train_recon and decompose on tiny params; the ground-truth evaluation of a decomposer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models import faces as face_model
from models.decomposition import SEMANTIC_NAMES, Decomposer, Decomposition
from models.recon_metrics import ground_truth_errors
from models.recon_training import ReconTrainer
from stages import decompose, faces, sample_latents, train_gan, train_recon
from store.artifacts import open_store
from store.checkpoints import latest_checkpoint, load_checkpoint
from support.recon import PANEL_COLUMNS, eval_faces, evaluate, load_decomposer, panel
from tests.conftest import tiny_linear_params


def tiny(repo_root, **recon):
    six_steps = {"steps": 6, "snapshot_steps": 3, "log_every": 1, "n_eval": 12, "yaw_every": 2, "yaw_start": 0}
    six_steps["yaw_augment"] = True  # the stage's augmentation paths (the default is off, README)
    return tiny_linear_params(latents={"n": 40, "chunk": 16, "batch_size": 8}, recon={**six_steps, **recon})


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """faces.zarr, the linear ground-truth generator and latents.zarr of tiny params."""
    from tests.conftest import REPO

    d = tmp_path_factory.mktemp("recon")
    params = tiny(REPO)
    faces.run(params, d / "faces.zarr", d / "r.csv", d / "m.json")
    train_gan.run(params, d / "faces.zarr", d / "gan", d / "gan_run", d / "g.json")
    sample_latents.run(params, d / "gan" / "generator.safetensors", d / "latents.zarr")
    return {"faces": d / "faces.zarr", "generator": d / "gan" / "generator.safetensors", "latents": d / "latents.zarr"}


def _train(params, stores, out):
    return train_recon.run(params, stores["generator"], stores["faces"], out / "recon", out / "run", out / "m.json")


# ------------------------------------------------------------------ ground-truth evaluation


class _Oracle(torch.nn.Module):
    """A 'decomposer' that returns given maps and views (to check the metrics)."""

    def __init__(self, depth, view, light):
        super().__init__()
        self.depth, self.view, self.light = depth, view, light

    def forward(self, images):
        b, r = len(images), images.shape[-1]
        ones = torch.ones(b, 1, r, r)
        return Decomposition(self.depth, torch.full((b, 3, r, r), 0.5), self.view, self.light, ones, ones)

    def semantic_view(self, view):
        return view  # reported as given (no pivot)


def test_ground_truth_errors_are_zero_for_the_truth_and_grow_with_errors(repo_root):
    params = tiny(repo_root, n_eval=16)
    data = eval_faces(params)
    region = face_model.region_masks(16)["region:face"]
    args = (data["images"], data["depth"], data["view"], data["light"], region)
    exact = ground_truth_errors(_Oracle(data["depth"], data["view"], data["light"]), *args)
    assert exact["side"].max() < 1e-5 and exact["mad_deg"].max() < 1e-3
    assert exact["yaw_err_deg"].max() == 0 and exact["light_err_deg"].max() < 0.1
    assert (exact["depth_px"] > 0).all()
    # a flattened face is wrong in depth and in normals
    flat = ground_truth_errors(_Oracle(torch.ones_like(data["depth"]), data["view"], data["light"]), *args)
    assert flat["side"].mean() > 5e-3 and flat["mad_deg"].mean() > 5
    yaw_off = data["view"].clone()
    yaw_off[:, 1] += 10.0
    shifted = ground_truth_errors(_Oracle(data["depth"], yaw_off, data["light"]), *args)
    torch.testing.assert_close(shifted["yaw_err_deg"], torch.full((16,), 10.0))
    torch.testing.assert_close(shifted["pred_yaw_deg"], yaw_off[:, 1])


def test_estimate_r_is_one_for_the_truth_and_reads_each_parameter_apart(repo_root):
    params = tiny(repo_root, n_eval=24, eval_batch=24)
    data = eval_faces(params)
    exact, per = evaluate(_Oracle(data["depth"], data["view"], data["light"]), params, "cpu")
    assert set(exact["estimate_r"]) == set(SEMANTIC_NAMES)
    assert all(r is None or r > 0.9999 for r in exact["estimate_r"].values())
    assert sum(r is not None for r in exact["estimate_r"].values()) >= 12  # the wide preset varies them
    np.testing.assert_allclose(per["est_tx"], data["view"][:, 3].numpy())
    # an estimate swapped with another parameter's truth decorrelates that row only
    view = data["view"].clone()
    view[:, 3] = torch.randn(24, generator=torch.Generator().manual_seed(0))
    noisy, _ = evaluate(_Oracle(data["depth"], view, data["light"]), params, "cpu")
    assert abs(noisy["estimate_r"]["tx"]) < 0.6 and noisy["estimate_r"]["yaw"] > 0.9999


def test_eval_faces_are_reproducible_and_cover_profiles(repo_root):
    params = tiny(repo_root, n_eval=64)
    a, b = eval_faces(params), eval_faces(params)
    torch.testing.assert_close(a["images"], b["images"])
    assert a["images"].shape == (64, 3, 16, 16) and a["depth"].shape == (64, 16, 16)
    assert (a["view"][:, 1].abs() > 45).sum() >= 5  # the wide preset has extreme yaws to score
    assert -1 <= a["images"].min() and a["images"].max() <= 1


def test_panel_has_one_row_of_five_views_per_face(repo_root):
    model = Decomposer(resolution=16, nf_map=4, zdim_map=8, nf_encoder=4, nf_conf=4, zdim_conf=8)
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    grid = panel(model, images)
    assert grid.shape == (3 * len(PANEL_COLUMNS), 3, 16, 16) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[0], np.round((images[0].numpy() * 0.5 + 0.5) * 255).astype(np.uint8))


# ------------------------------------------------------------------ train_recon


def test_train_recon_on_generations_writes_everything(repo_root, stores, tmp_path):
    params = tiny(repo_root, swap_prob=0.5, batch_size=16)  # v_yaw needs 64 (w, yaw) pairs first
    result = _train(params, stores, tmp_path)
    for key in ("side", "mad_deg", "yaw_mae_deg", "yaw_mae_extreme_deg", "steps", "img_per_s"):
        assert key in result
    assert result["steps"] == 6 and result["yaw_augment"] and result["yaw_updates"] >= 1
    assert json.loads((tmp_path / "m.json").read_text()) == result
    assert result["side"] > 0 and 0 < result["mad_deg"] < 90 and result["n_extreme"] >= 1
    out = tmp_path / "recon"
    for name in ("decomposer.safetensors", "decomposer.json", "panel.png", "yaw_scatter.png", "eval.csv"):
        assert (out / name).is_file(), name
    model = load_decomposer(out / "decomposer.safetensors", allow_degenerate=True)
    assert model.resolution == 16 and load_checkpoint(out / "decomposer.safetensors")[1]["train_on"] == "generator"
    # the reported view's pivot: fitted at export, in recon.json and the sidecar, restored on load
    assert isinstance(result["pivot_offset"], float) and model.pivot_offset == result["pivot_offset"]
    assert load_checkpoint(out / "decomposer.safetensors")[1]["pivot_offset"] == result["pivot_offset"]
    curves = (tmp_path / "run" / "curves.csv").read_text().splitlines()
    assert curves[0].startswith("step,total") and len(curves) == 1 + 6
    assert len(list((tmp_path / "run" / "panels").glob("step-*.png"))) == 2


def test_train_recon_on_faces_has_no_yaw_augmentation(repo_root, stores, tmp_path):
    result = _train(tiny(repo_root, train_on="faces", steps=3), stores, tmp_path)
    assert result["train_on"] == "faces" and not result["yaw_augment"] and result["yaw_updates"] == 0


def test_interrupted_train_recon_resumes_to_the_same_weights(repo_root, stores, tmp_path, monkeypatch):
    params = tiny(repo_root, swap_prob=0.5)
    _train(params, stores, tmp_path / "a")
    real, calls = ReconTrainer.step, {"n": 0}

    def crashing(self, images, w=None):
        calls["n"] += 1
        if calls["n"] == 5:  # after the first snapshot (step 3)
            raise KeyboardInterrupt
        return real(self, images, w)

    monkeypatch.setattr(ReconTrainer, "step", crashing)
    with pytest.raises(KeyboardInterrupt):
        _train(params, stores, tmp_path / "b")
    assert load_checkpoint(latest_checkpoint(tmp_path / "b" / "run" / "checkpoints"))[1]["step"] == 3
    counted = []

    def counting(self, images, w=None):
        counted.append(self.steps)
        return real(self, images, w)

    monkeypatch.setattr(ReconTrainer, "step", counting)
    _train(params, stores, tmp_path / "b")
    assert counted == [3, 4, 5]  # only the remaining steps, from the restored step
    a = load_checkpoint(tmp_path / "a" / "recon" / "decomposer.safetensors")[0]
    b = load_checkpoint(tmp_path / "b" / "recon" / "decomposer.safetensors")[0]
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    assert len((tmp_path / "b" / "run" / "curves.csv").read_text().splitlines()) == 1 + 6


def test_train_recon_divergence_stops_with_a_clear_message(repo_root, stores, tmp_path, monkeypatch):
    real, calls = ReconTrainer.step, {"n": 0}

    def exploding(self, images, w=None):
        calls["n"] += 1
        if calls["n"] == 5:
            raise FloatingPointError("non-finite loss 'total' = nan at step 4")
        return real(self, images, w)

    monkeypatch.setattr(ReconTrainer, "step", exploding)
    with pytest.raises(SystemExit, match="diverged at step 4.*last good checkpoint is kept: .*ckpt-"):
        _train(tiny(repo_root), stores, tmp_path)


def test_changed_recon_params_restart_instead_of_resuming(repo_root, stores, tmp_path, caplog):
    _train(tiny(repo_root), stores, tmp_path)
    old = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    with caplog.at_level("WARNING"):
        result = _train(tiny(repo_root, lr=3e-4), stores, tmp_path)
    (aside,) = tmp_path.glob("run.old-*")  # moved aside, never deleted
    assert sorted(p.name for p in (aside / "checkpoints").iterdir()) == old
    assert "lr: 0.001 -> 0.0003" in caplog.text
    meta = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))[1]
    assert meta["params_hash"] == tiny(repo_root, lr=3e-4).section_hash("recon") and result["steps"] == 6
    assert len((tmp_path / "run" / "curves.csv").read_text().splitlines()) == 1 + 6


HEALTHY = {
    "probe_loss": -1.0,
    "valid_frac": 0.7,
    "recon_contrast": 0.9,
    "albedo_std": 0.2,
    "yaw_std_deg": 10.0,
    "yaw_flip_bias_deg": 0.0,
    "convexity": 0.02,
}


def _scripted_probe(monkeypatch, *snapshots):
    """The stage's probe returns these measures (overrides of HEALTHY), one per snapshot in order, then
    HEALTHY (the final check of the exported weights)."""
    script = iter(snapshots)
    monkeypatch.setattr(train_recon, "probe", lambda *a, **k: {**HEALTHY, **next(script, {})})


def test_a_collapse_restarts_from_the_best_snapshot_with_a_new_seed(repo_root, stores, tmp_path, monkeypatch):
    """tiny: snapshots at steps 3 and 6. The step-6 snapshot has left the frame: training goes back to
    step 3 with seed 0 + 1000, redoes steps 4-6 (healthy now) and says so in recon.json and the sidecar."""
    _scripted_probe(monkeypatch, {}, {"valid_frac": 0.1}, {"probe_loss": -1.2})
    result = _train(tiny(repo_root), stores, tmp_path)
    (recovery,) = result["recoveries"]
    assert recovery["step"] == 6 and recovery["restart_step"] == 3 and recovery["seed"] == 1000
    assert recovery["lr"] == pytest.approx(0.5 * tiny(repo_root).recon.lr)  # recon.recovery_lr_factor 0.5
    optimizer = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))[0]["trainer"]["optimizer"]
    assert optimizer["param_groups"][0]["lr"] == pytest.approx(recovery["lr"])  # trained (and resumed) at it
    assert "out of the frame" in recovery["reasons"][0]
    assert result["steps"] == 6 and result["exported_step"] == 6 and result["degenerate"] is False
    assert load_checkpoint(tmp_path / "recon" / "decomposer.safetensors")[1]["recoveries"] == [recovery]
    steps = [int(r.split(",")[0]) for r in (tmp_path / "run" / "curves.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]  # the abandoned branch's rows are gone
    health = (tmp_path / "run" / "health.csv").read_text().splitlines()
    assert len(health) == 1 + 3 and "out of the frame" in health[2] and health[3].endswith("healthy")


def test_a_collapse_without_recoveries_left_stops_naming_the_signs(repo_root, stores, tmp_path, monkeypatch):
    _scripted_probe(monkeypatch, {}, {"recon_contrast": 0.01})
    with pytest.raises(
        SystemExit,
        match=r"collapsed at step 6: reconstruction near-constant or black.*"
        r"recon.max_recoveries",
    ):
        _train(tiny(repo_root, max_recoveries=0), stores, tmp_path)
    assert not (tmp_path / "recon").exists()


def test_the_best_snapshot_is_exported_not_the_last(repo_root, stores, tmp_path, monkeypatch):
    _scripted_probe(monkeypatch, {"probe_loss": -1.0}, {"probe_loss": -0.8})  # worse, not yet divergence
    result = _train(tiny(repo_root), stores, tmp_path)
    assert result["exported_step"] == 3 and result["steps"] == 6 and not result["recoveries"]
    exported = load_checkpoint(tmp_path / "recon" / "decomposer.safetensors")[0]
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.safetensors")[0]["trainer"]["decomposer"]
    last = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))[0]["trainer"]["decomposer"]
    for key in exported:
        torch.testing.assert_close(exported[key], best[key], msg=key)
    assert any(not torch.equal(exported[k], last[k]) for k in exported)


def test_an_exported_decomposer_whose_yaw_never_varied_is_marked_degenerate(repo_root, stores, tmp_path, monkeypatch):
    _scripted_probe(monkeypatch, {}, {}, {"yaw_std_deg": 0.5})  # snapshots fine, the export's yaw is constant
    result = _train(tiny(repo_root), stores, tmp_path)
    assert result["degenerate"] is True
    assert any("yaw does not vary" in r for r in result["degenerate_reasons"])
    assert load_checkpoint(tmp_path / "recon" / "decomposer.safetensors")[1]["degenerate"] is True


def test_downstream_refuses_a_degenerate_decomposer_unless_allowed(repo_root, stores, tmp_path):
    params = tiny(repo_root, allow_degenerate=False)
    _train(tiny(repo_root), stores, tmp_path)
    weights = tmp_path / "recon" / "decomposer.safetensors"
    sidecar = weights.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "degenerate": True, "degenerate_reasons": ["hollow face: test"]}))
    with pytest.raises(
        ValueError,
        match=r"decomposer.safetensors: train_recon marked this decomposition "
        r"degenerate \(hollow face: test\).*recon.allow_degenerate",
    ):
        decompose.run(params, weights, stores["latents"], tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()
    decompose.run(tiny(repo_root), weights, stores["latents"], tmp_path / "s.zarr")  # allowed: goes on
    assert open_store(tmp_path / "s.zarr")["semantics"].shape == (40, 14)


# ------------------------------------------------------------------ decompose


def test_decompose_matches_the_model_and_shards_reproduce_it(repo_root, stores, tmp_path):
    params = tiny(repo_root)
    _train(params, stores, tmp_path)
    weights = tmp_path / "recon" / "decomposer.safetensors"
    decompose.run(params, weights, stores["latents"], tmp_path / "one.zarr")
    decompose.run(params, weights, stores["latents"], tmp_path / "sh.zarr", "prepare")
    decompose.run(params, weights, stores["latents"], tmp_path / "sh.zarr", (1, 2))
    with pytest.raises(RuntimeError, match=r"chunks \[0, 2\] were not written"):
        decompose.run(params, weights, stores["latents"], tmp_path / "sh.zarr", "finalize")
    decompose.run(params, weights, stores["latents"], tmp_path / "sh.zarr", (0, 2))
    decompose.run(params, weights, stores["latents"], tmp_path / "sh.zarr", "finalize")
    one, sh = open_store(tmp_path / "one.zarr"), open_store(tmp_path / "sh.zarr")
    for name in ("semantics", "depth", "albedo"):
        np.testing.assert_array_equal(one[name][:], sh[name][:])
    assert one["semantics"].shape == (40, 14) and one["depth"].shape == (40, 1, 16, 16)
    assert one["albedo"].shape == (40, 3, 16, 16) and list(one["semantics"].attrs["columns"]) == list(SEMANTIC_NAMES)
    # row i is the decomposition of latents image i
    model = load_decomposer(weights, allow_degenerate=True)
    images = torch.from_numpy(open_store(stores["latents"])["images"][5:7]).float() / 127.5 - 1
    with torch.no_grad():
        ref = model.semantics(torch.nn.functional.interpolate(images, size=(16, 16), mode="area"))
    np.testing.assert_allclose(one["semantics"][5:7], ref.numpy(), rtol=1e-4, atol=1e-4)
    depth = one["depth"][:]
    assert 0.9 <= depth.min() and depth.max() <= 1.1


def test_decompose_refuses_an_incomplete_latents_store(repo_root, stores, tmp_path):
    params = tiny(repo_root)
    _train(params, stores, tmp_path)
    sample_latents.run(params, stores["generator"], tmp_path / "lat.zarr", "prepare")
    with pytest.raises(Exception, match="incomplete"):
        decompose.run(params, tmp_path / "recon" / "decomposer.safetensors", tmp_path / "lat.zarr", tmp_path / "s.zarr")


def test_recon_init_starts_from_a_decomposer_and_refuses_another_architecture(repo_root, stores, tmp_path):
    _train(tiny(repo_root, seed=5), stores, tmp_path / "a")  # another seed: other initial weights than c's
    init = tmp_path / "a" / "recon" / "decomposer.safetensors"
    shipped = load_checkpoint(init)[0]
    as_is = _train(tiny(repo_root, init=str(init), steps=0), stores, tmp_path / "b")  # 0 steps: the file, as is
    weights, meta = load_checkpoint(tmp_path / "b" / "recon" / "decomposer.safetensors")
    for key in shipped:
        torch.testing.assert_close(weights[key], shipped[key], msg=key)
    assert meta["init"] == str(init) and len(meta["init_sha256"]) == 16 and as_is["steps"] == 0
    for name, init_key in (("c", str(init)), ("scratch", None)):
        _train(tiny(repo_root, init=init_key, steps=3), stores, tmp_path / name)
    tuned = load_checkpoint(tmp_path / "c" / "recon" / "decomposer.safetensors")[0]
    scratch = load_checkpoint(tmp_path / "scratch" / "recon" / "decomposer.safetensors")[0]
    floats = [k for k in shipped if shipped[k].is_floating_point()]

    def gap(a, b):
        return torch.cat([(a[k] - b[k]).flatten() for k in floats]).norm().item()

    assert 0 < gap(tuned, shipped) < 0.1 * gap(scratch, shipped)  # fine-tuned from the file, not from new nets
    with pytest.raises(ValueError, match=r"recon.nf_map: \d+ in the file, 12 in params"):
        _train(tiny(repo_root, init=str(init), nf_map=12), stores, tmp_path / "d")
    assert not (tmp_path / "d" / "recon").exists()


def test_a_slow_drift_restarts_where_the_failing_measure_was_best(repo_root, stores, tmp_path, monkeypatch):
    """Snapshots at 3, 6, 9. The relief peaks at step 3 and flattens while the probe loss still falls:
    step 6 is the lowest-loss snapshot (healthy: 0.012 >= 0.3 x 0.03), step 9 a sheet. The recovery
    restarts from step 3, where the relief was best, not from step 6, and step 6 of the abandoned
    branch is never exported."""
    _scripted_probe(
        monkeypatch,
        {"convexity": 0.03},
        {"convexity": 0.012, "probe_loss": -1.5},
        {"convexity": 0.005, "probe_loss": -1.6},
        {"probe_loss": -0.9},  # the new branch: step 6, then step 9
        {"probe_loss": -1.1},
    )
    result = _train(tiny(repo_root, steps=9), stores, tmp_path)
    (recovery,) = result["recoveries"]
    assert recovery["step"] == 9 and recovery["restart_step"] == 3 and "relief flattened" in recovery["reasons"][0]
    assert result["steps"] == 9 and result["exported_step"] == 9 and result["degenerate"] is False
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("best*.safetensors"))
    assert "best-step-000000003.safetensors" in names  # still the relief's best


def test_a_snapshot_whose_yaw_has_not_learned_is_never_exported(repo_root, stores, tmp_path, monkeypatch):
    """Step 3 has the lowest probe loss but a constant yaw (a flat frontal decomposition); step 6 has
    learned the view. Step 6 is exported and the result is not degenerate."""
    _scripted_probe(monkeypatch, {"yaw_std_deg": 0.3, "probe_loss": -2.0}, {"probe_loss": -1.0})
    result = _train(tiny(repo_root), stores, tmp_path)
    assert result["exported_step"] == 6 and result["degenerate"] is False and not result["recoveries"]
