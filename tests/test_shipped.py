"""The shipped StyleGAN2 checkpoint (data/shipped) that the default run starts from."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import yaml
from safetensors import safe_open

from stages import train_gan
from store.checkpoints import save_checkpoint
from support.generators import load_generator, stylegan_config
from support.params import load_params, parse_params


@pytest.fixture(scope="module")
def shipped():
    from tests.conftest import REPO as repo_root

    params = load_params(repo_root / "params.yaml")
    weights = repo_root / params.gan.init
    return params, weights, json.loads(weights.with_suffix(".json").read_text())


def test_default_params_start_from_the_shipped_checkpoint_of_their_own_config_and_data(shipped):
    params, weights, meta = shipped
    assert params.gan.kind == "stylegan2" and weights.is_file()
    assert meta["config"] == stylegan_config(params.gan)  # loadable by the default run
    assert meta["faces_params_hash"] == params.section_hash("data")  # learned from today's default faces
    assert weights.stat().st_size < 10 * 2**20  # small: fp16, a few MB
    with safe_open(str(weights), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    # provenance the README promises
    assert {"commit", "params", "hardware", "wall_time_h", "command"} <= set(meta["trained_with"])
    assert {"fid", "fid_space", "ppl", "ppl_space", "mean_abs_rho"} <= set(meta["metrics"])
    assert meta["kimg"] >= 100 and meta["pose_check"]["yaw_linear_r"] >= 0.9
    assert abs(meta["pose_check"]["yaw_std_ratio"] - 1) <= 0.2


def test_shipped_generator_generates_and_initialises_training(shipped):
    params, weights, _ = shipped
    gen = load_generator(weights)
    with torch.no_grad():
        images = gen.synthesis(gen.mapping(torch.randn(4, gen.z_dim, generator=torch.Generator().manual_seed(0))))
    assert images.shape == (4, 3, 32, 32) and torch.isfinite(images).all() and images.std() > 0.05
    G, D, config, init_format = train_gan.initial_networks(params, params.section_hash("data"))
    assert config == {**stylegan_config(params.gan), **config} and init_format == "facesem"
    exported = gen.net.state_dict()
    for name, value in G.state_dict().items():  # G starts as the shipped G_ema
        torch.testing.assert_close(value, exported[name].float().to(value.dtype), msg=name)


def test_init_reads_the_architecture_from_the_file_refuses_a_snapshot_and_warns_on_other_data(
    repo_root, shipped, caplog, tmp_path
):
    params, weights, _ = shipped
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    raw["gan"].update(init=str(weights), channel_max=64)  # the file's architecture wins over the gan section
    with caplog.at_level(logging.INFO, logger="stages.train_gan"):
        G, _, config, _ = train_gan.initial_networks(parse_params(raw), params.section_hash("data"))
    assert config["channel_max"] == params.gan.channel_max and "channel_max 64 (file: 128)" in caplog.text
    meta = json.loads(weights.with_suffix(".json").read_text())  # a training snapshot of the right config
    snapshot = save_checkpoint(tmp_path, 1, {"trainer": {"nimg": torch.tensor(1)}}, meta)
    raw["gan"].update(init=str(snapshot), channel_max=params.gan.channel_max)
    with pytest.raises(ValueError, match="gan.init: .*not an exported G_ema \\+ D checkpoint .*'trainer'.*data/gan/"):
        train_gan.initial_networks(parse_params(raw), params.section_hash("data"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stages.train_gan"):
        train_gan.initial_networks(params, "0000000000000000")
    assert "was trained on faces data with params hash" in caplog.text


def test_shipped_sidecar_metrics_are_recomputed_from_the_weights(shipped):
    """mean |rho| of W, recomputed from the shipped weights with numpy on other samples, agrees
    with what the training run wrote in the sidecar (not read back from it)."""
    import numpy as np

    _, weights, meta = shipped
    gen = load_generator(weights)
    z = torch.randn(4096, gen.z_dim, generator=torch.Generator().manual_seed(123))
    w = gen.mapping(z).double().numpy()
    rho = np.corrcoef(w, rowvar=False)
    recomputed = np.abs(rho[~np.eye(len(rho), dtype=bool)]).mean()
    assert recomputed == pytest.approx(meta["metrics"]["mean_abs_rho"], abs=0.005)
    assert 0.05 < recomputed < 0.2  # decorrelated, as Table 1 reports, not the ~0 of independent noise
