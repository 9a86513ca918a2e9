"""Importing the field's StyleGAN2 checkpoints (store/stylegan2_formats.py): exact against the
reference implementations' own outputs, and safe (a pickle is data, never code).

References: ../shared/fixtures/stylegan2/ (README there). The 32 px NVlabs files are copied in
tests/fixtures/stylegan2; the 64 px conv_clamp and rosinality ones are read from ../shared, which
CI always has (missing there, these tests fail under CI and skip elsewhere).
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from store.checkpoints import CheckpointError
from store.stylegan2_formats import read_stylegan2
from support.generators import build_stylegan
from tests.conftest import REPO
from tests.nvlabs_pickle import write_nvlabs_pickle

LOCAL = REPO / "tests" / "fixtures" / "stylegan2"
SHARED = REPO.parent / "shared" / "fixtures" / "stylegan2"
TOL = 1e-4


def _fixture_dir(name: str) -> Path:
    for folder in (LOCAL, SHARED):
        if (folder / f"{name}_io.safetensors").is_file() or (folder / f"{name}.pt").is_file():
            return folder
    if os.environ.get("CI"):
        pytest.fail(f"fixture {name} missing from {LOCAL} and {SHARED}: CI must have ../shared")
    pytest.skip(f"fixture {name} not available outside CI ({SHARED})")


def _nvlabs(name: str):
    folder = _fixture_dir(name)
    g = load_file(folder / f"{name}_G_ema.safetensors")
    d = load_file(folder / f"{name}_D.safetensors")
    config = json.loads((folder / f"{name}_config.json").read_text())
    return g, d, config, load_file(folder / f"{name}_io.safetensors")


def _build(imported):
    G, D = build_stylegan(imported.config)
    G.load_state_dict(imported.G_ema)  # strict: every key, nothing left over
    if imported.D is not None:
        D.load_state_dict(imported.D)
    return G.eval(), D.eval()


def _close(a, b, what):
    diff = float((a - b).abs().max())
    assert diff <= TOL, f"{what}: max |difference| {diff:.2e} > {TOL}"
    return diff


@pytest.mark.parametrize("name", ["nvlabs_32", "nvlabs_64_clamp"])
def test_nvlabs_pickle_reproduces_the_reference_outputs(tmp_path, name):
    g, d, config, io = _nvlabs(name)
    pkl = write_nvlabs_pickle(tmp_path / f"{name}.pkl", g, d, config)
    imported = read_stylegan2(pkl)
    assert imported.format == "nvlabs" and imported.D is not None
    cfg = imported.config
    assert (cfg["resolution"], cfg["z_dim"], cfg["w_dim"]) == (
        config["G"]["img_resolution"],
        config["G"]["z_dim"],
        config["G"]["w_dim"],
    )
    assert cfg["mapping_layers"] == config["G"]["mapping_kwargs"]["num_layers"]
    assert (cfg["channel_base"], cfg["channel_max"]) == (
        config["G"]["synthesis_kwargs"]["channel_base"],
        config["G"]["synthesis_kwargs"]["channel_max"],
    )
    assert cfg["conv_clamp"] == config["G"]["synthesis_kwargs"]["conv_clamp"]
    G, D = _build(imported)
    assert G.num_ws == io["ws"].shape[1]
    with torch.no_grad():
        _close(G.mapping(io["z"], 1.0), io["ws"], "ws")
        _close(G.mapping(io["z"], 0.7), io["ws_psi0.7"], "ws (truncation 0.7)")
        _close(G.synthesis(io["ws"], noise_mode="const"), io["img_const_noise"], "images, constant noise")
        _close(G.synthesis(io["ws_psi0.7"], noise_mode="const"), io["img_psi0.7_const_noise"], "images, psi 0.7")
        _close(G.synthesis(io["ws"], noise_mode="none"), io["img_no_noise"], "images, no noise")
        _close(D(io["img_const_noise"]), io["D_logits"], "D logits")


def test_rosinality_checkpoint_reproduces_the_reference_outputs():
    folder = _fixture_dir("rosinality_16")
    io = load_file(folder / "rosinality_16_io.safetensors")
    imported = read_stylegan2(folder / "rosinality_16.pt")
    assert imported.format == "rosinality" and imported.D is None
    assert {k: imported.config[k] for k in ("resolution", "z_dim", "w_dim", "mapping_layers")} == {
        "resolution": 16,
        "z_dim": 512,
        "w_dim": 512,
        "mapping_layers": 8,
    }
    G, _ = _build(imported)
    with torch.no_grad():
        _close(G.mapping(io["z"], 1.0, broadcast=False), io["w"], "w = style(z)")
        _close(G.mapping.w_avg, io["latent_avg"], "latent_avg")
        _close(G.synthesis(G.mapping(io["z"]), noise_mode="const"), io["img_stored_noise"], "images, stored noise")
        img = G.synthesis(G.mapping(io["z"], 0.7), noise_mode="const")
        _close(img, io["img_psi0.7_stored_noise"], "images, psi 0.7")


# ---- never execute code from a checkpoint


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_calls_os_system_is_refused_without_running_it(tmp_path):
    g, d, config, _ = _nvlabs("nvlabs_32")
    marker = tmp_path / "pwned"
    pkl = write_nvlabs_pickle(tmp_path / "evil.pkl", g, d, config, extra={"augment_pipe": _Payload(marker)})
    with pytest.raises(CheckpointError, match=r"refused to load global (posix|os)\.system"):
        read_stylegan2(pkl)
    assert not marker.exists()


def test_module_src_is_never_executed(tmp_path):
    g, d, config, io = _nvlabs("nvlabs_32")
    marker = tmp_path / "ran"
    src = f"open({str(marker)!r}, 'w').write('module_src was executed')\n"
    imported = read_stylegan2(write_nvlabs_pickle(tmp_path / "src.pkl", g, d, config, module_src=src))
    assert not marker.exists()
    G, _ = _build(imported)
    with torch.no_grad():
        _close(G.synthesis(io["ws"], noise_mode="const"), io["img_const_noise"], "images")


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("conditional", "conditional generator (c_dim = 10)"),
        ("stylegan3", "StyleGAN3"),
        ("tensorflow", "TensorFlow pickle"),
        ("truncated", "not a readable NVlabs pickle"),
        ("not_networks", "holds ['weights']"),
        ("garbage", "not a StyleGAN2 checkpoint"),
    ],
)
def test_unsupported_files_fail_before_any_work_naming_what_was_found(tmp_path, case, fragment):
    g, d, config, _ = _nvlabs("nvlabs_32")
    path = tmp_path / f"{case}.pkl"
    if case == "conditional":
        write_nvlabs_pickle(path, g, d, config, g_attrs={"c_dim": 10})
    elif case == "stylegan3":
        write_nvlabs_pickle(path, {**g, "synthesis.input.freqs": torch.zeros(4, 2)}, d, config)
    elif case == "tensorflow":
        path.write_bytes(pickle.dumps(None).replace(b"N.", b"cdnnlib.tflib.network\nNetwork\n)R."))
    elif case == "truncated":
        full = write_nvlabs_pickle(tmp_path / "full.pkl", g, d, config).read_bytes()
        path.write_bytes(full[: len(full) // 2])
    elif case == "not_networks":
        path.write_bytes(pickle.dumps({"weights": [1, 2]}))
    else:
        path.write_bytes(b"GIF89a not a checkpoint")
    with pytest.raises(CheckpointError, match=re.escape(fragment)):
        read_stylegan2(path)


def test_import_gan_writes_a_generator_the_pipeline_loads(tmp_path):
    import subprocess
    import sys

    from support.generators import load_generator

    g, d, config, io = _nvlabs("nvlabs_32")
    pkl = write_nvlabs_pickle(tmp_path / "ffhq.pkl", g, d, config)
    out = tmp_path / "imported"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "import-gan", str(pkl), "--out", str(out), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["format"] == "nvlabs" and summary["has_D"]
    assert {k: summary[k] for k in ("resolution", "w_dim", "num_ws", "mapping_layers")} == {
        "resolution": 32,
        "w_dim": 256,
        "num_ws": 8,
        "mapping_layers": 8,
    }
    assert (out / "samples.png").is_file()
    gen = load_generator(out / "generator.safetensors")
    with torch.no_grad():
        w = gen.mapping(io["z"], 1.0)  # [4, w_dim]: one w per image, broadcast to every layer
        _close(w, io["ws"][:, 0], "w")
        _close(gen.synthesis(w), io["img_const_noise"], "images through load_generator")
    bad = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "import-gan", str(tmp_path / "missing.pkl"), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "missing.pkl not found" in bad.stderr


def test_export_gives_nvlabs_state_dicts_and_a_lossless_round_trip(tmp_path):
    from support.generators import load_generator
    from support.interchange import export_generator, import_generator

    g, d, config, io = _nvlabs("nvlabs_32")
    import_generator(write_nvlabs_pickle(tmp_path / "a.pkl", g, d, config), tmp_path / "ours")
    summary = export_generator(tmp_path / "ours" / "generator.safetensors", tmp_path / "nv")
    assert summary["files"] == ["G_ema.safetensors", "D.safetensors", "config.json"]
    for part, ref in (("G_ema", g), ("D", d)):  # NVlabs' own key set, values as read
        exported = load_file(tmp_path / "nv" / f"{part}.safetensors")
        assert set(exported) == set(ref), set(exported) ^ set(ref)
        for key, value in ref.items():
            assert torch.equal(exported[key], value.float()), key
    exported_config = json.loads((tmp_path / "nv" / "config.json").read_text())
    for net in ("G", "D"):
        for key, value in config[net].items():
            if isinstance(value, dict):
                assert {k: exported_config[net][key].get(k) for k in value} == value, (net, key)
            else:
                assert exported_config[net][key] == value, (net, key)
    # project -> NVlabs layout -> project: identical images
    back = write_nvlabs_pickle(
        tmp_path / "b.pkl",
        load_file(tmp_path / "nv" / "G_ema.safetensors"),
        load_file(tmp_path / "nv" / "D.safetensors"),
        exported_config,
    )
    import_generator(back, tmp_path / "again")
    first, second = (load_generator(tmp_path / f / "generator.safetensors") for f in ("ours", "again"))
    with torch.no_grad():
        w = first.mapping(io["z"], 0.7)
        assert torch.equal(first.synthesis(w), second.synthesis(second.mapping(io["z"], 0.7)))


def test_export_writes_directions_as_plain_unit_vectors(tmp_path):
    import numpy as np

    from store.artifacts import write_store
    from support.interchange import export_generator

    g, d, config, _ = _nvlabs("nvlabs_32")
    from support.interchange import import_generator

    import_generator(write_nvlabs_pickle(tmp_path / "a.pkl", g, d, config), tmp_path / "ours")
    units = torch.nn.functional.normalize(torch.randn(3, 256), dim=1).numpy()
    with write_store(tmp_path / "directions.zarr", "regress", {}, "h") as group:
        group.create_array("unit", data=units)
        group.create_array("sigma_w", data=np.array([0.5, 1.0, 2.0], np.float32))
        group["unit"].attrs["rows"] = ["yaw", "pitch", "roll"]
    summary = export_generator(
        tmp_path / "ours" / "generator.safetensors", tmp_path / "nv", tmp_path / "directions.zarr", tmp_path / "none"
    )
    assert summary["directions"] == 3 and summary["components"] == 0
    saved = np.load(tmp_path / "nv" / "directions.npy")
    assert saved.shape == (3, 256) and np.allclose(saved, units) and np.allclose(np.linalg.norm(saved, axis=1), 1)
    info = json.loads((tmp_path / "nv" / "directions.json").read_text())
    assert info["names"] == ["yaw", "pitch", "roll"] and info["sigma_w"] == [0.5, 1.0, 2.0]


def test_an_import_gan_output_used_as_gan_init_keeps_its_origin(tmp_path):
    """gan.init = DIR/generator.safetensors written by import-gan: train_gan still knows the weights
    are an NVlabs network (exported in float32; evaluate's learned oracle refuses to judge it)."""
    from stages import train_gan
    from support.interchange import import_generator
    from tests.conftest import make_params

    g, d, config, _ = _nvlabs("nvlabs_32")
    import_generator(write_nvlabs_pickle(tmp_path / "a.pkl", g, d, config), tmp_path / "ours")
    params = make_params(gan={"init": str(tmp_path / "ours" / "generator.safetensors"), "kimg": 0})
    G, D, cfg, origin = train_gan.initial_networks(params, params.section_hash("data"))
    assert origin == "nvlabs" and cfg["resolution"] == 32 and cfg["w_dim"] == 256
