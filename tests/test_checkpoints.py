import torch

from store.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint


def test_round_trip_nested_state(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    seq = torch.nn.Sequential(torch.nn.Linear(2, 2))  # dotted keys: '0.weight'
    state = {
        "net": net.state_dict(),
        "opt": opt.state_dict(),
        "counter": 7,
        "pl_mean": torch.tensor(0.5),
        "seq": seq.state_dict(),
    }
    path = save_checkpoint(tmp_path, 12, state, {"kimg": 0.1})
    loaded, meta = load_checkpoint(path)
    assert meta["kimg"] == 0.1 and meta["step"] == 12 and loaded["counter"] == 7
    assert set(loaded["seq"]) == {"0.weight", "0.bias"}
    net2 = torch.nn.Linear(3, 2)
    net2.load_state_dict(loaded["net"])
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)
    opt2 = torch.optim.Adam(net2.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["opt"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert opt2.state_dict()["param_groups"][0]["lr"] == 1e-3


def test_latest_skips_checkpoints_without_sidecar(tmp_path):
    save_checkpoint(tmp_path, 1, {"x": torch.zeros(1)}, {})
    second = save_checkpoint(tmp_path, 2, {"x": torch.ones(1)}, {})
    assert latest_checkpoint(tmp_path) == second
    second.with_suffix(".json").unlink()  # an interrupted write
    assert latest_checkpoint(tmp_path).name == "ckpt-000000001.safetensors"
    assert latest_checkpoint(tmp_path / "none") is None


# ------------------------------------------------------------------ damaged files name themselves

import json  # noqa: E402

import pytest  # noqa: E402

from store.checkpoints import CheckpointError  # noqa: E402


def _damage(weights, how):
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "sidecar cut":
        sidecar = weights.with_suffix(".json")
        sidecar.write_text(sidecar.read_text()[: len(sidecar.read_text()) // 2])


def _tiny_state():
    return {"w": torch.arange(4096, dtype=torch.float32)}


@pytest.mark.parametrize(
    "how, message",
    [
        ("truncated", r"checkpoint weights .*ckpt-000000001\.safetensors cannot be read .* truncated, corrupt"),
        ("sidecar cut", r"checkpoint sidecar .*ckpt-000000001\.json is not valid JSON .* cut mid-way"),
    ],
)
def test_a_damaged_checkpoint_names_its_file_and_what_to_do(tmp_path, how, message):
    weights = save_checkpoint(tmp_path, 1, _tiny_state(), {"step": 1})
    _damage(weights, how)
    with pytest.raises(CheckpointError, match=message + ".*(re-export|Restore)"):
        load_checkpoint(weights)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny linear generator, decomposer and oracle as their stages export them."""
    from stages import faces, train_gan, train_oracle, train_recon
    from tests.conftest import tiny_linear_params

    d = tmp_path_factory.mktemp("exported")
    p = tiny_linear_params(oracle={"epochs": 1, "batch_size": 16, "width": 4})
    faces.run(p, d / "faces.zarr", d / "r.csv", d / "f.json")
    train_gan.run(p, d / "faces.zarr", d / "gan", d / "gan_run", d / "g.json")
    train_oracle.run(p, d / "faces.zarr", d / "oracle", d / "o.json")
    train_recon.run(
        p, d / "gan" / "generator.safetensors", d / "faces.zarr", d / "recon", d / "recon_run", d / "r.json"
    )
    return {
        "generator": d / "gan" / "generator.safetensors",
        "decomposer": d / "recon" / "decomposer.safetensors",
        "oracle": d / "oracle" / "oracle.safetensors",
    }


def _loaders():
    from support.generators import load_generator
    from support.oracle import load_oracle
    from support.recon import load_decomposer

    return {
        "generator": load_generator,
        "decomposer": lambda p: load_decomposer(p, allow_degenerate=True),
        "oracle": lambda p: load_oracle(p.parent),
    }


@pytest.mark.parametrize("loader", ["generator", "decomposer", "oracle"])
@pytest.mark.parametrize("how", ["truncated", "sidecar cut"])
def test_every_loader_names_a_damaged_file(exported, tmp_path, loader, how):
    import shutil

    src = exported[loader]
    folder = tmp_path / loader
    shutil.copytree(src.parent, folder)
    weights = folder / src.name
    _damage(weights, how)
    with pytest.raises(
        CheckpointError,
        match=str(weights.with_suffix(".json" if how == "sidecar cut" else ".safetensors")).replace(".", r"\."),
    ):
        _loaders()[loader](weights)


def test_a_decomposer_of_another_architecture_is_named(exported, tmp_path):
    import shutil

    from support.recon import load_decomposer

    folder = tmp_path / "recon"
    shutil.copytree(exported["decomposer"].parent, folder)
    sidecar = folder / "decomposer.json"
    meta = json.loads(sidecar.read_text())
    meta["config"]["nf_map"] = 8  # the weights were trained with 4
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"decomposer\.safetensors: its weights do not fit the decomposer"):
        load_decomposer(folder / "decomposer.safetensors", allow_degenerate=True)


@pytest.mark.parametrize("bad", [None, "0.03", float("nan"), True])
def test_a_decomposer_sidecar_with_a_bad_pivot_offset_is_named(exported, tmp_path, bad):
    import shutil

    from support.recon import load_decomposer

    folder = tmp_path / "recon"
    shutil.copytree(exported["decomposer"].parent, folder)
    sidecar = folder / "decomposer.json"
    meta = json.loads(sidecar.read_text())
    meta["pivot_offset"] = bad
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"decomposer\.safetensors: sidecar 'pivot_offset' must be a finite number"):
        load_decomposer(folder / "decomposer.safetensors", allow_degenerate=True)
    meta["pivot_offset"] = 0.03
    sidecar.write_text(json.dumps(meta))
    assert load_decomposer(folder / "decomposer.safetensors", allow_degenerate=True).pivot_offset == 0.03


def test_a_truncated_gan_init_names_the_key_and_the_file(exported, tmp_path):
    import shutil

    import yaml

    from stages import train_gan
    from support.params import parse_params
    from tests.conftest import REPO

    init = tmp_path / "init.safetensors"
    shutil.copy(REPO / "data" / "shipped" / "stylegan2_faces32.safetensors", init)
    shutil.copy(REPO / "data" / "shipped" / "stylegan2_faces32.json", init.with_suffix(".json"))
    _damage(init, "truncated")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["device"], raw["gan"]["init"] = "cpu", str(init)
    with pytest.raises(CheckpointError, match=r"gan\.init: checkpoint weights .*init\.safetensors cannot be read"):
        train_gan.initial_networks(parse_params(raw), "hash")


@pytest.mark.parametrize("name", ["ffhq.pkl", "550000.pt"])
def test_a_foreign_checkpoint_given_as_generator_names_import_gan(tmp_path, name):
    from support.generators import load_generator

    (tmp_path / name).write_bytes(b"not read")
    with pytest.raises(
        CheckpointError, match=rf"{name}: an NVlabs / rosinality checkpoint is imported first: facesem import-gan"
    ):
        load_generator(tmp_path / name)
