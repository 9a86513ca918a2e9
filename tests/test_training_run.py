"""The training-run frame both training stages use (support/training_run.py)."""

from __future__ import annotations

import torch

from support.distributed import World
from support.training_run import TrainingRun, trajectory, trajectory_hash


def _run(tmp_path, lr=0.1, keep=2, rank=0):
    traj = trajectory({"lr": lr, "steps": 100, "seed": 0}, {"steps"}, source="abc")
    return TrainingRun("train_x", tmp_path / "run", traj, World(rank, 2 if rank else 1), keep)


def test_trajectory_leaves_out_the_length_and_adds_the_data():
    traj = trajectory({"lr": 0.1, "steps": 100}, {"steps"}, source="abc")
    assert traj == {"lr": 0.1, "source": "abc"}
    assert trajectory_hash(traj) == trajectory_hash({"source": "abc", "lr": 0.1})  # key order free
    assert trajectory_hash(traj) != trajectory_hash({**traj, "lr": 0.2})


def test_resume_rotate_and_set_aside(tmp_path):
    run = _run(tmp_path)
    assert run.resume("cpu") is None  # nothing there yet
    for step in (10, 20, 30):
        run.save(step, {"x": torch.full((2,), float(step))}, {"shown": step})
    run.save(30, {"x": torch.zeros(2)}, {"shown": 30}, name="best")
    names = sorted(p.name for p in run.checkpoints.glob("*.safetensors"))
    assert names == ["best.safetensors", "ckpt-000000020.safetensors", "ckpt-000000030.safetensors"]
    state, meta = _run(tmp_path).resume("cpu")  # a new process, same trajectory
    assert torch.equal(state["x"], torch.full((2,), 30.0)) and meta["shown"] == 30
    assert meta["run_hash"] == run.run_hash and meta["trajectory"]["source"] == "abc"

    other = _run(tmp_path, lr=0.2)  # another trajectory: the old run is moved aside, not deleted
    assert other.resume("cpu") is None
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and (aside[0] / "checkpoints" / "ckpt-000000030.safetensors").is_file()


def test_rank_seeds_differ_and_follow_the_step(tmp_path):
    a, b = _run(tmp_path, rank=0), _run(tmp_path, rank=1)
    assert a.rank_seed(5, 0) == 5 and a.rank_seed(5, 7) == 12
    assert len({a.rank_seed(5, s) for s in range(100)} | {b.rank_seed(5, s) for s in range(100)}) == 200


def test_divergence_names_the_checkpoint_kept(tmp_path):
    run = _run(tmp_path)
    run.save(40, {"x": torch.zeros(1)}, {})
    exit_ = run.diverged("step 41", FloatingPointError("loss is nan"))
    assert isinstance(exit_, SystemExit)
    assert "train_x: training diverged at step 41 (loss is nan)" in str(exit_.code)
    assert "ckpt-000000040.safetensors" in str(exit_.code)
