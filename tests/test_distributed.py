"""Data-parallel training (support/distributed.py) with 2 gloo processes on the CPU, and torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml


def _init(rank: int, world: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)


def _average_worker(rank, world, init_file, out):
    from support.distributed import average_gradients

    _init(rank, world, init_file)
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([a, b], lr=1.0)
    a.grad = torch.full((3,), float(rank + 1))  # b has no gradient on any rank
    average_gradients(opt)
    torch.save({"a": a.grad, "b": b.grad}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def _gan_worker(rank, world, init_file, out, hook):
    from models.gan_training import GANTrainer
    from support.distributed import average_gradients, broadcast_parameters
    from support.generators import build_stylegan

    _init(rank, world, init_file)
    torch.manual_seed(100 + rank)  # different initial weights on purpose: the broadcast must fix that
    G, D = build_stylegan(
        {"z_dim": 8, "w_dim": 8, "mapping_layers": 1, "resolution": 8, "channel_base": 32, "channel_max": 8}
    )
    broadcast_parameters(G, D)
    trainer = GANTrainer(G, D, batch_size=2, r1_interval=2, pl_interval=2, decorr_batch_size=8, seed=rank)
    if hook:
        trainer.grad_hook, trainer.world_size = average_gradients, world
    g = torch.Generator().manual_seed(rank)  # each rank its own reals
    for _ in range(3):
        trainer.step(torch.rand(2, 3, 8, 8, generator=g) * 2 - 1)
    flat = torch.cat([p.detach().flatten() for p in [*G.parameters(), *D.parameters()]])
    torch.save({"params": flat, "nimg": trainer.nimg}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def _spawn(fn, tmp_path, *args):
    mp.spawn(fn, args=(2, str(tmp_path / "pg"), str(tmp_path), *args), nprocs=2, join=True)
    return [torch.load(tmp_path / f"{r}.pt") for r in range(2)]


def test_average_gradients_means_over_ranks_and_keeps_missing_ones_missing(tmp_path):
    results = _spawn(_average_worker, tmp_path)
    for r in results:
        torch.testing.assert_close(r["a"], torch.full((3,), 1.5))
        assert r["b"] is None


@pytest.mark.parametrize("hook", [True, False])
def test_gan_replicas_stay_identical_only_with_averaged_gradients(tmp_path, hook):
    r0, r1 = _spawn(_gan_worker, tmp_path, hook)
    if hook:
        assert torch.equal(r0["params"], r1["params"]) and r0["nimg"] == 12  # 3 steps x 2 images x 2 ranks
    else:
        assert not torch.allclose(r0["params"], r1["params"])  # different data: replicas drift apart


def _assert_identical_replicas(log: str, per_rank_batch: int) -> None:
    """Each rank logs its share of the batch and a digest of its parameters at the end of training:
    the digests are equal (bit-identical replicas), each rank took batch / 2, only rank 0 writes."""
    import re

    found = re.findall(
        r"rank (\d) of 2: (\d+) images per step, (\d+) steps, parameters sha256 (\w+)( \(writes nothing\))?", log
    )
    assert sorted(r[0] for r in found) == ["0", "1"], log[-3000:]
    by_rank = {r[0]: r for r in found}
    assert by_rank["0"][3] == by_rank["1"][3]  # same weights on both ranks
    assert by_rank["0"][2] == by_rank["1"][2] and int(by_rank["0"][1]) == int(by_rank["1"][1]) == per_rank_batch
    assert by_rank["1"][4] and not by_rank["0"][4]  # rank 1 writes nothing


@pytest.mark.slow
def test_torchrun_trains_the_gan_stage_with_two_ranks(repo_root, tmp_path):
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    raw["device"] = "cpu"
    raw["data"].update(n_images=32, resolution=32, n_eval=4, chunk=16, batch_size=16)
    raw["gan"].update(
        init="scratch",
        kimg=0.016,
        snapshot_kimg=0.008,
        batch_size=4,
        decorr_batch_size=16,
        channel_base=64,
        channel_max=8,
        mapping_layers=1,
        z_dim=8,
        w_dim=8,
        resolution=8,
        grid=2,
        metric_samples=64,
        fid_samples=0,
        ppl_samples=0,
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    from stages import faces
    from support.params import parse_params

    faces.run(parse_params(raw), tmp_path / "faces.zarr", tmp_path / "r.csv", tmp_path / "f.json")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "stages.train_gan",
            "--",
            "--params",
            str(tmp_path / "params.yaml"),
            "--faces",
            str(tmp_path / "faces.zarr"),
            "--out",
            str(tmp_path / "gan"),
            "--run",
            str(tmp_path / "run"),
            "--metrics",
            str(tmp_path / "g.json"),
        ],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "g.json").read_text())
    assert metrics["ranks"] == 2 and metrics["kimg"] == pytest.approx(0.016)
    _assert_identical_replicas(proc.stderr, per_rank_batch=2)
    assert (tmp_path / "gan" / "generator.safetensors").is_file()
    assert len(list((tmp_path / "run" / "checkpoints").glob("*.safetensors"))) >= 1


@pytest.mark.slow
def test_torchrun_trains_the_3d_net_with_two_ranks(repo_root, tmp_path):
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    raw["device"] = "cpu"
    raw["data"].update(n_images=32, resolution=32, n_eval=4, chunk=16, batch_size=16)
    raw["recon"].update(
        train_on="faces",
        resolution=16,
        nf_map=4,
        zdim_map=8,
        nf_encoder=4,
        nf_conf=4,
        zdim_conf=8,
        steps=4,
        batch_size=4,
        snapshot_steps=2,
        n_eval=8,
        eval_batch=8,
        panel_images=2,
        allow_degenerate=True,
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    from stages import faces
    from support.params import parse_params

    faces.run(parse_params(raw), tmp_path / "faces.zarr", tmp_path / "r.csv", tmp_path / "f.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "stages.train_recon",
            "--",
            "--params",
            str(tmp_path / "params.yaml"),
            "--generator",
            str(tmp_path / "none.safetensors"),
            "--faces",
            str(tmp_path / "faces.zarr"),
            "--out",
            str(tmp_path / "recon"),
            "--run",
            str(tmp_path / "run"),
            "--metrics",
            str(tmp_path / "m.json"),
        ],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["ranks"] == 2 and metrics["steps"] == 4 and "side" in metrics
    _assert_identical_replicas(proc.stderr, per_rank_batch=2)
    assert (tmp_path / "recon" / "decomposer.safetensors").is_file()
