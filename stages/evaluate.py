"""Stage `evaluate`: how linear and how clean the learned directions are, measured by the oracle.

On `evaluate.n_samples` fresh samples w -> G(w), the oracle (stage train_oracle) measures the 14
univariate semantics. Writes the metrics JSON (`table2`, `oracle_r2`, `flagged`, `peers`,
`edit`, and `linear_recovery_cos` for the linear generator) and the same as CSV tables in
`--out`: table2.csv (directions x semantics, Pearson r of w.v_hat with the measured
semantic), peers.csv (best |r| per semantic: ours, GANSpace, SeFa, InterFaceGAN), edit.csv, and
with `--components` (stage factorize's store) components.csv / `components`: for each localized
component the oracle factor it moves most per unit s (in stds of that factor) and the runner-up.
Factors the oracle measures with R^2 below `oracle.r2_threshold` are flagged in every table.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from models import faces as face_model
from models.linear_semantics import entangled_directions, manipulate, unit
from models.peers import best_abs_corr, ganspace_streaming, interfacegan, pearson, sefa
from store.artifacts import open_store, read_json, write_json
from store.checkpoints import load_checkpoint
from support.device import select_device
from support.generators import load_generator
from support.landmark_oracle import POSE_NAMES, LandmarkPoseOracle
from support.measure import Measure, landmark_table2
from support.params import Params
from support.stage import stage_args

log = logging.getLogger("stages.evaluate")


def edit_quality(
    measure: Measure, w: torch.Tensor, units: torch.Tensor, sigma: torch.Tensor, scale: float, std: torch.Tensor
) -> torch.Tensor:
    """Mean movement [k, m] of each measured semantic per unit s along each direction, in stds of the semantic."""
    rows = []
    for v, s in tqdm(list(zip(units, sigma)), desc="edit quality", unit="direction"):
        lo, hi = (measure(manipulate(w, v, sign * scale, s)) for sign in (-1.0, 1.0))
        rows.append(((hi - lo) / (2 * scale)).mean(0) / std)
    return torch.stack(rows)


def component_factors(edit: torch.Tensor, names: list[str], factor_names: list[str]) -> dict:
    """For each component (rows of edit [K, F], std per unit s), the factor it moves most and the runner-up."""
    result = {}
    for name, row in zip(names, edit):
        order = row.abs().argsort(descending=True).tolist()
        result[name] = {
            "moves": factor_names[order[0]],
            "std_per_s": round(float(row[order[0]]), 4),
            "runner_up": factor_names[order[1]] if len(order) > 1 else "",
            "runner_up_std_per_s": round(float(row[order[1]]), 4) if len(order) > 1 else 0.0,
        }
    return result


def run_landmarks(params: Params, gen, oracle_dir: Path, directions: Path, out: Path, metrics: Path, start) -> dict:
    """Table 2 with the landmark oracle: the three pose semantics it can read (pitch, yaw, roll),
    over the generations where a face is found; the other semantics are listed as not measured."""
    evaluate_params = params.evaluate
    store = open_store(directions)
    names = list(store["unit"].attrs["rows"])
    units = torch.from_numpy(store["unit"][:]).float()
    device = select_device(params.device)
    found = landmark_table2(
        gen,
        units,
        evaluate_params.n_samples,
        evaluate_params.batch_size,
        evaluate_params.seed,
        device,
        LandmarkPoseOracle(params.oracle.landmark_detector, params.oracle.landmark_fov_deg),
    )
    table2 = found["table2"]  # [k, 3]
    validation = read_json(oracle_dir / "landmarks.json")
    w, y, ok = found["w"][found["measured_mask"]], found["y"][found["measured_mask"]].float(), found["n_measured"]
    k = evaluate_params.peers_k
    peers = {"ours": torch.stack([table2[names.index(n), j].abs() for j, n in enumerate(POSE_NAMES)])}
    if ok >= 3:
        peers["sefa"] = best_abs_corr(w, sefa([a.cpu() for a in gen.modulation_weights()], k), y)
        half = ok // 2
        if half >= 3:
            peers["interfacegan"] = pearson(w[half:] @ interfacegan(w[:half], y[:half]).T, y[half:]).diagonal().abs()

    def cell(x) -> float | None:
        return None if math.isnan(float(x)) else round(float(x), 4)

    result = {
        "oracle": "landmarks",
        "table2": {d: {s: cell(table2[i, j]) for j, s in enumerate(POSE_NAMES)} for i, d in enumerate(names)},
        "n_samples": evaluate_params.n_samples,
        "n_measured": ok,  # generations where a face was found: every correlation is over these
        "measured": list(POSE_NAMES),
        "not_measured": [n for n in names if n not in POSE_NAMES],
        "not_measured_reason": "the landmark oracle reads head pose only (no lighting, no translation)",
        "peers": {m: {s: cell(v[j]) for j, s in enumerate(POSE_NAMES)} for m, v in peers.items()},
        "oracle_r2": validation.get("oracle_r2", {}),
        "flagged": validation.get("flagged", []),
        "generator_kind": gen.kind,
        "space": f"Pearson r over fresh samples of w . v_hat against the pose {params.oracle.landmark_detector} "
        "landmarks + solvePnP read off G(w), on the samples with a detected face",
    }
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(table2.numpy(), index=names, columns=list(POSE_NAMES)).round(4).assign(n_measured=ok).to_csv(
        out / "table2.csv", index_label="direction"
    )
    result["seconds"] = round(time.perf_counter() - start, 1)
    write_json(metrics, result)
    return result


def run(
    params: Params,
    generator: Path,
    oracle_dir: Path,
    directions: Path,
    out: Path,
    metrics: Path,
    components: Path | None = None,
) -> dict:
    start, evaluate_params = time.perf_counter(), params.evaluate
    if params.oracle.kind == "landmarks":
        return run_landmarks(
            params, load_generator(generator, select_device(params.device)), oracle_dir, directions, out, metrics, start
        )
    oracle_meta = (
        load_checkpoint(oracle_dir / "oracle.safetensors")[1] if (oracle_dir / "oracle.safetensors").is_file() else None
    )
    if oracle_meta is None:
        result = {"skipped": True, "reason": "no oracle (real data has no ground-truth factors to train one)"}
        out.mkdir(parents=True, exist_ok=True)
        write_json(metrics, result)
        return result
    device = select_device(params.device)
    gen = load_generator(generator, device)
    imported = gen.meta.get("init_format") in ("nvlabs", "rosinality")
    if imported:  # the learned oracle knows only the synthetic faces: its numbers would mean nothing here
        names = list(open_store(directions)["unit"].attrs["rows"])
        result = {
            "skipped": True,
            "reason": f"the generator was imported ({gen.meta['init_format']} checkpoint): the learned oracle is "
            "trained on the synthetic faces and cannot measure its faces; no semantic is measured (a landmark "
            "oracle reads real faces' pose: set oracle.kind: landmarks)",
            "measured": [],
            "not_measured": names,
        }
        out.mkdir(parents=True, exist_ok=True)
        write_json(metrics, result)
        return result
    store = open_store(directions)
    names = list(store["unit"].attrs["rows"])
    units, sigma = torch.from_numpy(store["unit"][:]), torch.from_numpy(store["sigma_w"][:])
    measure = Measure(gen, oracle_dir, evaluate_params.batch_size, device)
    sel = [measure.names.index(n) if n in measure.names else -1 for n in names]
    if -1 in sel:
        raise ValueError(f"the oracle in {oracle_dir} does not measure {[n for n, i in zip(names, sel) if i < 0]}")
    g = torch.Generator().manual_seed(evaluate_params.seed)
    z = torch.randn(evaluate_params.n_samples, gen.z_dim, generator=g)
    w = torch.cat(
        [
            gen.mapping(z[b : b + evaluate_params.batch_size].to(device)).cpu()
            for b in range(0, len(z), evaluate_params.batch_size)
        ]
    )
    log.info("measuring %d generations with the oracle", len(w))
    y_all = measure(w)  # [n, F]: every factor the oracle measures
    y, std_all = y_all[:, sel], y_all.std(0).clamp_min(1e-8)  # [n, 14], [F]
    table2 = pearson(w @ units.T, y)  # [directions, semantics]
    flagged = [n for n in names if n in oracle_meta.get("flagged", [])]
    half = len(w) // 2  # InterFaceGAN: fit on one half, score on the other
    k, peer_rng = evaluate_params.peers_k, torch.Generator().manual_seed(evaluate_params.seed + 1)

    def sample_w(m: int) -> torch.Tensor:  # GANSpace's own samples of W
        return gen.mapping(torch.randn(m, gen.z_dim, generator=peer_rng).to(device)).cpu()

    peers = {
        "ours": table2.diagonal().abs(),
        "ganspace": best_abs_corr(w, ganspace_streaming(sample_w, evaluate_params.ganspace_samples, k), y),
        "sefa": best_abs_corr(w, sefa([a.cpu() for a in gen.modulation_weights()], k), y),
        "interfacegan": pearson(w[half:] @ interfacegan(w[:half], y[:half]).T, y[half:]).diagonal().abs(),
    }
    edit_all = edit_quality(
        measure, w[: evaluate_params.edit_samples], units, sigma, evaluate_params.edit_scale, std_all
    )
    edit = edit_all[:, sel]  # [14, 14]
    # entanglement counts every factor the oracle reads well (not flagged), e.g. hair colour, besides the 14
    others = [i for i, f in enumerate(measure.names) if f not in names and f not in oracle_meta.get("flagged", [])]
    columns = sel + others
    off = ~torch.eye(len(names), dtype=torch.bool)

    def named(row) -> dict:
        return {n: round(float(x), 4) for n, x in zip(names, row)}

    result = {
        "table2": {d: named(row) for d, row in zip(names, table2)},
        "table2_diag_mean_abs": round(float(table2.diagonal().abs().mean()), 4),
        "table2_offdiag_mean_abs": round(float(table2.abs()[off].mean()), 4),
        "oracle_r2": oracle_meta.get("oracle_r2", {}),
        "flagged": flagged,
        "peers": {m: named(v) for m, v in peers.items()},
        "edit": {
            d: {
                "target_std_per_s": round(float(edit[i, i]), 4),
                "leakage_std_per_s": round(float(edit[i][off[i]].abs().mean()), 4),
            }
            for i, d in enumerate(names)
        },
        # a direction whose edit moves another semantic (one of the 14 or a well-read factor such as
        # hair colour) more than its own (oracle, stds per unit s)
        "entangled": entangled_directions(edit_all[:, columns], names, [measure.names[i] for i in columns]),
        "generated_pose_std_deg": {
            n: round(float(y[:, names.index(n)].std()), 3) for n in ("yaw", "pitch", "roll") if n in names
        },  # spread of the generations' pose (oracle); data: faces.json
        "n_samples": evaluate_params.n_samples,
        "generator_kind": gen.kind,
        "space": "Pearson r over fresh samples of w . v_hat against oracle-measured semantics of G(w)",
    }
    comp_store = open_store(components) if components is not None and components.exists() else None
    if comp_store is not None and comp_store["unit"].shape[0]:  # which factor each localized component moves
        comp_names = list(comp_store["unit"].attrs["rows"])
        comp_edit = edit_quality(
            measure,
            w[: evaluate_params.edit_samples],
            torch.from_numpy(comp_store["unit"][:]),
            torch.from_numpy(comp_store["sigma_w"][:]),
            evaluate_params.edit_scale,
            std_all,
        )
        result["components"] = component_factors(comp_edit, comp_names, measure.names)
    if gen.kind == "linear":
        truth = unit(gen.net.directions[[face_model.FACTOR_INDEX[n] for n in names]].cpu())
        result["linear_recovery_cos"] = named((unit(units) * truth).sum(1))
    out.mkdir(parents=True, exist_ok=True)
    flag = ["flagged" if n in flagged else "" for n in names]
    tangled = [result["entangled"].get(n, {}).get("moves_more", "") for n in names]
    pd.DataFrame(table2.numpy(), index=names, columns=names).round(4).assign(
        oracle_flag=flag, entangled_moves_more=tangled
    ).to_csv(out / "table2.csv", index_label="direction")
    pd.DataFrame({m: v.numpy() for m, v in peers.items()}, index=names).round(4).assign(oracle_flag=flag).to_csv(
        out / "peers.csv", index_label="semantic"
    )
    pd.DataFrame(result["edit"]).T.assign(oracle_flag=flag).to_csv(out / "edit.csv", index_label="direction")
    if "components" in result:
        pd.DataFrame(result["components"]).T.to_csv(out / "components.csv", index_label="component")
    result["seconds"] = round(time.perf_counter() - start, 1)
    write_json(metrics, result)
    return result


def main() -> None:
    args, params = stage_args(
        __doc__.splitlines()[0], ["generator", "oracle", "directions", "out", "metrics", "components"]
    )
    result = run(
        params,
        Path(args.generator),
        Path(args.oracle),
        Path(args.directions),
        Path(args.out),
        Path(args.metrics),
        Path(args.components),
    )
    print({k: v for k, v in result.items() if not isinstance(v, dict)})


if __name__ == "__main__":
    main()
