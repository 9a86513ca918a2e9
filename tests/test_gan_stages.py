"""Stages train_gan and sample_latents on tiny params: resume, NaN guard, linear truth, shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from models.gan_training import GANTrainer
from pipeline.code_deps import PACKAGES
from stages import faces, sample_latents, train_gan
from store.artifacts import open_store
from store.checkpoints import latest_checkpoint, load_checkpoint
from support.generators import load_generator
from support.params import parse_params
from tests.conftest import REPO


def tiny(repo_root, **gan):
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    raw["device"] = "cpu"
    raw["data"].update(n_images=64, resolution=32, n_eval=4, chunk=32, batch_size=32)
    raw["gan"].update(
        init="scratch",
        kimg=0.064,
        snapshot_kimg=0.032,
        batch_size=8,
        decorr_batch_size=64,
        log_every=1,
        channel_base=128,
        channel_max=16,
        mapping_layers=2,
        z_dim=16,
        w_dim=16,
        grid=2,
        metric_samples=64,
        resolution=16,
        fid_samples=0,
        ppl_samples=0,
    )
    raw["gan"].update(gan)
    raw["latents"].update(n=40, chunk=16, batch_size=8)
    return parse_params(raw)


@pytest.fixture(scope="module")
def faces_store(tmp_path_factory, repo_root=None):
    from tests.conftest import REPO

    d = tmp_path_factory.mktemp("faces")
    faces.run(tiny(REPO), d / "faces.zarr", d / "r.csv", d / "m.json")
    return d / "faces.zarr"


def _weights(out):
    state, _ = load_checkpoint(out / "generator.safetensors")
    return state["G_ema"]


def _count_steps(monkeypatch, real_step) -> list[int]:
    """Patch GANTrainer.step to record the step count each call starts from."""
    counted = []

    def counting(self, real):
        counted.append(self.step_count)
        return real_step(self, real)

    monkeypatch.setattr(GANTrainer, "step", counting)
    return counted


def test_interrupted_run_resumes_to_the_same_result(repo_root, faces_store, tmp_path, monkeypatch):
    params = tiny(repo_root)
    train_gan.run(params, faces_store, tmp_path / "a", tmp_path / "a_run", tmp_path / "a.json")

    real_step, calls = GANTrainer.step, {"n": 0}

    def crashing_step(self, real):
        calls["n"] += 1
        if calls["n"] == 6:  # after the first snapshot (4 steps of 8 = 0.032 kimg)
            raise KeyboardInterrupt
        return real_step(self, real)

    monkeypatch.setattr(GANTrainer, "step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        train_gan.run(params, faces_store, tmp_path / "b", tmp_path / "b_run", tmp_path / "b.json")
    assert load_checkpoint(latest_checkpoint(tmp_path / "b_run" / "checkpoints"))[1]["shown"] == 32
    counted = _count_steps(monkeypatch, real_step)
    result = train_gan.run(params, faces_store, tmp_path / "b", tmp_path / "b_run", tmp_path / "b.json")
    assert result["kimg"] == pytest.approx(0.064)
    assert counted == [4, 5, 6, 7]  # only the remaining steps, from the restored step count
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    curves = (tmp_path / "b_run" / "curves.csv").read_text().splitlines()
    assert len(curves) == 1 + 8  # header + one row per step, none duplicated by the resume
    assert len(list((tmp_path / "b_run" / "samples").glob("*.png"))) == 2


def test_changed_params_do_not_resume_stale_checkpoints(repo_root, faces_store, tmp_path):
    train_gan.run(tiny(repo_root), faces_store, tmp_path / "o", tmp_path / "run", tmp_path / "m.json")
    res = train_gan.run(tiny(repo_root, lr=0.001), faces_store, tmp_path / "o", tmp_path / "run", tmp_path / "m.json")
    meta = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))[1]
    assert meta["params_hash"] == tiny(repo_root, lr=0.001).section_hash("gan") and res["kimg"] == pytest.approx(0.064)


def test_a_larger_budget_continues_the_run(repo_root, faces_store, tmp_path, monkeypatch):
    train_gan.run(tiny(repo_root, kimg=0.032), faces_store, tmp_path / "o", tmp_path / "run", tmp_path / "m.json")
    first = latest_checkpoint(tmp_path / "run" / "checkpoints")
    counted = _count_steps(monkeypatch, GANTrainer.step)
    train_gan.run(tiny(repo_root, kimg=0.064), faces_store, tmp_path / "o", tmp_path / "run", tmp_path / "m.json")
    curves = (tmp_path / "run" / "curves.csv").read_text().splitlines()
    assert first.exists() and len(curves) == 1 + 8 and counted == [4, 5, 6, 7]  # continued, not restarted


def test_a_trajectory_change_moves_the_old_run_aside_and_names_the_change(repo_root, faces_store, tmp_path, caplog):
    """batch 4 -> 8: the old checkpoints are kept under data/gan_run.old-<time>, never deleted."""
    run = tmp_path / "gan_run"
    train_gan.run(tiny(repo_root, batch_size=4), faces_store, tmp_path / "o", run, tmp_path / "m.json")
    old = sorted(p.name for p in (run / "checkpoints").iterdir())
    old_curves = (run / "curves.csv").read_text()
    with caplog.at_level("WARNING"):
        train_gan.run(tiny(repo_root, batch_size=8), faces_store, tmp_path / "o", run, tmp_path / "m.json")
    (aside,) = tmp_path.glob("gan_run.old-*")
    assert sorted(p.name for p in (aside / "checkpoints").iterdir()) == old
    assert (aside / "curves.csv").read_text() == old_curves
    assert "batch_size: 4 -> 8" in caplog.text and str(aside) in caplog.text
    assert load_checkpoint(latest_checkpoint(run / "checkpoints"))[1]["trajectory"]["batch_size"] == 8


def test_non_finite_loss_stops_with_a_clear_message(repo_root, faces_store, tmp_path, monkeypatch):
    real_step, calls = GANTrainer.step, {"n": 0}

    def exploding(self, real):
        calls["n"] += 1
        if calls["n"] == 6:
            raise FloatingPointError("non-finite G adversarial loss")
        return real_step(self, real)

    monkeypatch.setattr(GANTrainer, "step", exploding)
    with pytest.raises(SystemExit, match="diverged at 0.04 kimg.*last good checkpoint is kept: .*ckpt-"):
        train_gan.run(tiny(repo_root), faces_store, tmp_path / "o", tmp_path / "run", tmp_path / "m.json")
    assert latest_checkpoint(tmp_path / "run" / "checkpoints") is not None


def test_linear_generator_encodes_its_true_directions(repo_root, faces_store, tmp_path):
    params = tiny(repo_root, kind="linear", w_dim=32)
    train_gan.run(params, faces_store, tmp_path / "lin", tmp_path / "run", tmp_path / "m.json")
    gen = load_generator(tmp_path / "lin" / "generator.safetensors")
    w = gen.mapping(torch.randn(256, 32, generator=torch.Generator().manual_seed(0)))
    f = gen.net.factors(w)
    # least squares of each factor on w recovers exactly its direction
    coef = torch.linalg.lstsq(torch.cat([w, torch.ones(256, 1)], 1), f).solution[:-1]  # [d, F]
    cos = torch.nn.functional.cosine_similarity(coef.T, gen.net.directions, dim=1)
    assert cos.min() > 0.999
    # and the images do move along the yaw direction
    yaw = gen.net.directions[list(open_store(faces_store)["factors"].attrs["columns"]).index("yaw")]
    a, b = gen.synthesis(w[:2] - 2 * yaw), gen.synthesis(w[:2] + 2 * yaw)
    assert (a - b).abs().mean() > 0.02


def test_sharded_sampling_equals_single_process(repo_root, faces_store, tmp_path):
    params = tiny(repo_root)
    train_gan.run(params, faces_store, tmp_path / "g", tmp_path / "run", tmp_path / "m.json")
    gen = tmp_path / "g" / "generator.safetensors"
    sample_latents.run(params, gen, tmp_path / "one.zarr")
    sample_latents.run(params, gen, tmp_path / "sh.zarr", "prepare")
    with pytest.raises(Exception, match="incomplete"):
        open_store(tmp_path / "sh.zarr")
    sample_latents.run(params, gen, tmp_path / "sh.zarr", (1, 2))
    with pytest.raises(RuntimeError, match=r"chunks \[0, 2\] were not written"):
        sample_latents.run(params, gen, tmp_path / "sh.zarr", "finalize")
    sample_latents.run(params, gen, tmp_path / "sh.zarr", (0, 2))
    sample_latents.run(params, gen, tmp_path / "sh.zarr", "finalize")
    one, sh = open_store(tmp_path / "one.zarr"), open_store(tmp_path / "sh.zarr")
    for name in ("z", "w", "images"):
        np.testing.assert_array_equal(one[name][:], sh[name][:])
    assert one["images"].shape == (40, 3, 16, 16) and one["images"][:].std() > 1
    for store in (one, sh):  # each chunk's time is kept; the store's `seconds` is their sum
        assert (store["chunk_seconds"][:] > 0).all()
        assert store.attrs["seconds"] == pytest.approx(store["chunk_seconds"][:].sum(), abs=0.01)
    # w really is F(z) of the exported generator
    g = load_generator(gen)
    torch.testing.assert_close(g.mapping(torch.from_numpy(one["z"][:5])), torch.from_numpy(one["w"][:5]))


def test_snapshot_grids_below_0_1_kimg_do_not_overwrite_each_other(repo_root, faces_store, tmp_path):
    train_gan.run(
        tiny(repo_root, kimg=0.064, snapshot_kimg=0.016),
        faces_store,
        tmp_path / "o",
        tmp_path / "run",
        tmp_path / "m.json",
    )
    names = sorted(p.name for p in (tmp_path / "run" / "samples").glob("*.png"))
    assert names == ["kimg-00000.016.png", "kimg-00000.032.png", "kimg-00000.048.png", "kimg-00000.064.png"]


def test_changed_faces_data_invalidate_gan_and_recon_checkpoints(repo_root, faces_store, tmp_path, monkeypatch):
    """Same params, other faces (data.seed 1): neither train_gan nor train_recon (on faces) resumes."""
    from models.recon_training import ReconTrainer
    from stages import train_recon

    other = tmp_path / "other.zarr"
    base = tiny(repo_root)
    faces.run(
        base.model_copy(update={"data": base.data.model_copy(update={"seed": 1})}),
        other,
        tmp_path / "r.csv",
        tmp_path / "f.json",
    )
    assert open_store(other).attrs["params_hash"] != open_store(faces_store).attrs["params_hash"]
    params = tiny(repo_root)
    train_gan.run(params, faces_store, tmp_path / "o", tmp_path / "run", tmp_path / "m.json")
    counted = _count_steps(monkeypatch, GANTrainer.step)
    train_gan.run(params, other, tmp_path / "o", tmp_path / "run", tmp_path / "m.json")
    assert counted[0] == 0 and len(list(tmp_path.glob("run.old-*"))) == 1  # from scratch; the old run kept

    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    raw["device"] = "cpu"
    raw["data"].update(resolution=32)
    raw["recon"].update(
        train_on="faces",
        resolution=16,
        nf_map=4,
        zdim_map=8,
        nf_encoder=4,
        nf_conf=4,
        zdim_conf=8,
        steps=2,
        batch_size=4,
        snapshot_steps=1,
        n_eval=8,
        eval_batch=8,
        panel_images=2,
        allow_degenerate=True,
    )
    rparams = parse_params(raw)
    train_recon.run(rparams, tmp_path / "none", faces_store, tmp_path / "rec", tmp_path / "rrun", tmp_path / "r.json")
    steps, real = [], ReconTrainer.step
    monkeypatch.setattr(ReconTrainer, "step", lambda self, *a, **k: (steps.append(self.steps), real(self, *a, **k))[1])
    train_recon.run(rparams, tmp_path / "none", other, tmp_path / "rec", tmp_path / "rrun", tmp_path / "r.json")
    assert steps == [0, 1] and len(list(tmp_path.glob("rrun.old-*"))) == 1


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_through_dvc_repro_and_matches(repo_root, tmp_path):
    """`dvc repro train_gan` killed with SIGKILL after its first snapshot: the rerun (data/gan_run is
    `persist: true`) resumes from that checkpoint and ends with the weights of an uninterrupted run."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from pipeline.env import environment_defaults

    root = tmp_path / "repo"
    for folder in PACKAGES:
        shutil.copytree(repo_root / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {k: stages[k] for k in ("faces", "train_gan")}}))
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    params = tiny(repo_root, kimg=0.8, snapshot_kimg=0.08)  # 100 steps, a snapshot every 10
    raw.update({k: v for k, v in params.model_dump().items() if k in ("device", "data", "gan")})
    raw["data"]["alpha_background"] = None
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    (root / "data").mkdir()
    (root / "data" / "raw").mkdir()
    (root / "data" / "shipped").mkdir()
    (root / "data" / "pretrained").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DVC_"))}
    env.update(environment_defaults(root), PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=root, env=env, check=True)
    subprocess.run([*dvc, "repro", "faces"], cwd=root, env=env, check=True, capture_output=True)

    first = subprocess.Popen(
        [*dvc, "repro", "train_gan"],
        cwd=root,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpts, deadline = root / "data" / "gan_run" / "checkpoints", time.monotonic() + 300
    while not list(ckpts.glob("ckpt-*.json")):  # readiness: the first snapshot is complete (sidecar last)
        assert first.poll() is None and time.monotonic() < deadline, "no snapshot before the run ended"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # dvc and the stage, at once
    first.wait()
    killed_at = load_checkpoint(latest_checkpoint(ckpts))[1]["shown"]
    assert killed_at < 800
    again = subprocess.run([*dvc, "repro", "train_gan"], cwd=root, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from ckpt-" in again.stdout + again.stderr

    train_gan.run(params, root / "data" / "faces.zarr", tmp_path / "ref", tmp_path / "ref_run", tmp_path / "m.json")
    a, b = _weights(root / "data" / "gan"), _weights(tmp_path / "ref")
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def _tiny_nvlabs_pickle(path):
    from models.stylegan2 import Discriminator, Generator
    from tests.nvlabs_pickle import write_nvlabs_pickle

    torch.manual_seed(3)
    G, D = Generator(16, 16, 2, 16, 128, 16), Discriminator(16, 128, 16)
    synthesis = {"channel_base": 128, "channel_max": 16, "num_fp16_res": 0, "conv_clamp": None}
    config = {
        "G": {
            "z_dim": 16,
            "c_dim": 0,
            "w_dim": 16,
            "img_resolution": 16,
            "img_channels": 3,
            "mapping_kwargs": {"num_layers": 2},
            "synthesis_kwargs": synthesis,
        },
        "D": {"c_dim": 0, "img_resolution": 16, "img_channels": 3, "channel_base": 128, "channel_max": 16},
    }
    return write_nvlabs_pickle(path, G.state_dict(), D.state_dict(), config), G.state_dict()


def test_an_imported_nvlabs_gan_is_fine_tuned_with_decorrelation(repo_root, faces_store, tmp_path, monkeypatch):
    """gan.init = an NVlabs .pkl, gan.kimg > 0: G, G_ema and D start from the file's, training,
    EMA, Eq. 1 and resume work as for the project's own checkpoints."""
    pkl, start = _tiny_nvlabs_pickle(tmp_path / "ffhq_tiny.pkl")
    params = tiny(repo_root, init=str(pkl), kimg=0.032, z_dim=8, w_dim=8)  # z/w from the file, not these
    result = train_gan.run(params, faces_store, tmp_path / "o", tmp_path / "run", tmp_path / "m.json")
    assert result["kimg"] == pytest.approx(0.032) and result["mean_abs_rho"] > 0
    meta = json.loads((tmp_path / "o" / "generator.json").read_text())
    assert meta["init_format"] == "nvlabs" and meta["config"]["w_dim"] == 16
    tuned = _weights(tmp_path / "o")
    assert tuned["synthesis.b16.torgb.bias"].dtype == torch.float32  # an imported net is exported exactly
    assert not torch.equal(tuned["mapping.fc0.weight"], start["mapping.fc0.weight"])  # trained
    counted = _count_steps(monkeypatch, GANTrainer.step)  # a longer budget resumes that run
    train_gan.run(
        tiny(repo_root, init=str(pkl), kimg=0.048, z_dim=8, w_dim=8),
        faces_store,
        tmp_path / "o",
        tmp_path / "run",
        tmp_path / "m.json",
    )
    assert counted == [4, 5]


def test_a_file_without_discriminator_can_only_be_used_as_is(repo_root, faces_store, tmp_path):
    rosinality = REPO.parent / "shared" / "fixtures" / "stylegan2" / "rosinality_16.pt"
    if not rosinality.is_file():
        pytest.skip("../shared fixtures not present")
    with pytest.raises(ValueError, match=r"holds no discriminator.*gan\.kimg: 0"):
        train_gan.run(
            tiny(repo_root, init=str(rosinality)), faces_store, tmp_path / "o", tmp_path / "r", tmp_path / "m.json"
        )
