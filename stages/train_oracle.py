"""Stage `train_oracle`: a supervised factor regressor on faces.zarr, for evaluation only.

It measures the ground-truth semantics of GAN generations (at the GAN's resolution), like
the paper's external 3D landmarker, but for every factor. Reports held-out R^2 per factor
and flags those below `oracle.r2_threshold`. With real data (no factors) it is skipped.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.oracle import FactorRegressor, r2_scores
from store.artifacts import open_store, write_json
from store.checkpoints import save_checkpoint
from store.datasets import load_images, to_unit
from support.device import select_device
from support.landmark_oracle import POSE_NAMES, LandmarkPoseOracle, validate
from support.oracle import predict
from support.params import Params
from support.stage import stage_args

log = logging.getLogger("stages.train_oracle")


def train(params: Params, images: torch.Tensor, factors: torch.Tensor, device) -> tuple[FactorRegressor, torch.Tensor]:
    """Fit on a random (1 - holdout) split; returns the model and held-out R^2 per factor."""
    oracle_params = params.oracle
    g = torch.Generator().manual_seed(oracle_params.seed)
    order = torch.randperm(len(images), generator=g)
    n_test = max(1, int(len(images) * oracle_params.holdout))
    test, fit = order[:n_test], order[n_test:]
    model = FactorRegressor(factors.shape[1], images.shape[-1], oracle_params.width).to(device)
    model.mean.copy_(factors[fit].mean(0))
    model.std.copy_(factors[fit].std(0).clamp_min(1e-6))
    opt = torch.optim.Adam(model.parameters(), lr=oracle_params.lr)
    steps = oracle_params.epochs * (len(fit) // oracle_params.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=oracle_params.lr, total_steps=max(steps, 1))
    model.train()
    with tqdm(total=steps, desc="train_oracle", unit="step") as bar:
        for _ in range(oracle_params.epochs):
            perm = fit[torch.randperm(len(fit), generator=g)]
            for b in range(len(fit) // oracle_params.batch_size):
                idx = perm[b * oracle_params.batch_size : (b + 1) * oracle_params.batch_size]
                x = to_unit(images[idx]).to(device)
                y = (factors[idx].to(device) - model.mean) / model.std
                loss = F.mse_loss(model.standardized(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval(), r2_scores(predict(model, images[test], device), factors[test])


def run_landmarks(params: Params, out: Path, metrics: Path) -> dict:
    """oracle.kind: landmarks: nothing to train; validate it on rendered faces of known pose and
    record that (out/landmarks.json, the metrics) with the same oracle_r2 / flagged keys."""
    start = time.perf_counter()
    oracle = LandmarkPoseOracle(params.oracle.landmark_detector, params.oracle.landmark_fov_deg)
    check = validate(oracle, params.oracle.landmark_faces, params.oracle.landmark_size)
    oracle_r2 = {n: check["r2"][n] for n in POSE_NAMES}
    flagged = [n for n, v in oracle_r2.items() if v is None or v < params.oracle.r2_threshold]
    result = {
        "kind": "landmarks",
        "detector": params.oracle.landmark_detector,
        "fov_deg": params.oracle.landmark_fov_deg,
        "measures": list(POSE_NAMES),
        "oracle_r2": oracle_r2,
        "flagged": flagged,
        "r2_threshold": params.oracle.r2_threshold,
        "validation": check,
        "validation_space": "procedural faces (pose preset wide) rendered with known pose; r^2 of Pearson r "
        f"on the faces the landmark detector ({params.oracle.landmark_detector}) finds",
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(out / "landmarks.json", result)
    write_json(metrics, result)
    return result


def run(params: Params, faces: Path, out: Path, metrics: Path) -> dict:
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if params.oracle.kind == "landmarks":
        return run_landmarks(params, out, metrics)
    group = open_store(faces)
    if "factors" not in group:
        log.warning(
            "train_oracle skipped: faces.zarr has no ground-truth factors (data.source=%s); "
            "the oracle needs synthetic data",
            group.attrs.get("source"),
        )
        result = {"skipped": True, "reason": "no ground-truth factors (real data)"}
        write_json(out / "oracle.json", result)
        write_json(metrics, result)
        return result
    torch.manual_seed(params.oracle.seed)
    device = select_device(params.device)
    images, attrs = load_images(faces, params.gan.resolution)
    names = list(group["factors"].attrs["columns"])
    model, r2 = train(params, images, torch.from_numpy(group["factors"][:]), device)
    oracle_r2 = {n: round(float(v), 4) for n, v in zip(names, r2)}
    flagged = [n for n, v in oracle_r2.items() if v < params.oracle.r2_threshold]
    meta = {
        "factor_names": names,
        "resolution": params.gan.resolution,
        "width": params.oracle.width,
        "faces_params_hash": attrs["params_hash"],
        "params_hash": params.section_hash("oracle", "gan"),
        "oracle_r2": oracle_r2,
        "flagged": flagged,
        "r2_threshold": params.oracle.r2_threshold,
    }
    save_checkpoint(out, 0, model.state_dict(), meta, name="oracle")
    result = {
        "oracle_r2": oracle_r2,
        "flagged": flagged,
        "r2_threshold": params.oracle.r2_threshold,
        "resolution": params.gan.resolution,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(metrics, result)
    return result


def main() -> None:
    args, params = stage_args(__doc__.splitlines()[0], ["faces", "out", "metrics"])
    result = run(params, Path(args.faces), Path(args.out), Path(args.metrics))
    print({k: v for k, v in result.items() if k != "oracle_r2"})


if __name__ == "__main__":
    main()
