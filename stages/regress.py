"""Stage `regress`: Eq. 2-3 on latents.zarr (w) and semantics.zarr -> data/directions.zarr.

Streams the normal equations chunk by chunk (memory O(d^2 + d S) whatever N): one solve
gives the 14 univariate directions (with unit vectors, sigma_w = std of w.v_hat over the
samples, and R^2 of the pair fit) and, with `regress.jacobian`, the Jacobian J [S, d] of every
canonical depth and albedo pixel (S = 4 r^2: depth, then albedo R, G, B, each r x r).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.linear_semantics import NormalEquations, projection_std, stream_pairs, unit
from store.artifacts import open_store, write_json, write_store
from support.params import Params
from support.stage import stage_args

log = logging.getLogger("stages.regress")


def chunks(latents, semantics, size: int, with_maps: bool, dropped: list[int] | None = None):
    """(w [c, d], y [c, 14 (+ S)]) float64 blocks, in sample order.

    Samples with a non-finite w or measurement are left out; their indices are appended to
    ``dropped`` (so a NaN never reaches a direction).
    """
    n = latents["w"].shape[0]
    for lo in range(0, n, size):
        w = torch.from_numpy(latents["w"][lo : lo + size]).double()
        y = [torch.from_numpy(semantics["semantics"][lo : lo + size]).double()]
        if with_maps:
            y += [torch.from_numpy(semantics[m][lo : lo + size]).double().flatten(1) for m in ("depth", "albedo")]
        y = torch.cat(y, 1)
        finite = torch.isfinite(w).all(1) & torch.isfinite(y).all(1)
        if not finite.all():
            if dropped is not None:
                dropped.extend((lo + torch.nonzero(~finite)[:, 0]).tolist())
            w, y = w[finite], y[finite]
        yield w, y


def solve(params: Params, latents, semantics) -> dict[str, torch.Tensor]:
    """The streaming regression: directions [k, d], r2 [k], and the Jacobian [S, d] when asked."""
    regress_params = params.regress
    n, d = latents["w"].shape
    if semantics["semantics"].shape[0] != n:
        raise ValueError(
            f"semantics.zarr has {semantics['semantics'].shape[0]} rows, latents.zarr {n}: "
            "they must come from the same sample_latents run (re-run decompose)"
        )
    k = semantics["semantics"].shape[1]
    s = (
        int(np.prod(semantics["depth"].shape[1:]) + np.prod(semantics["albedo"].shape[1:]))
        if regress_params.jacobian
        else 0
    )
    eq = NormalEquations(d, k + s)
    size = max(
        regress_params.chunk - regress_params.chunk % latents["w"].chunks[0], latents["w"].chunks[0]
    )  # chunk-aligned reads
    dropped: list[int] = []
    pairs = stream_pairs(
        chunks(latents, semantics, size, regress_params.jacobian, dropped),
        regress_params.scheme,
        torch.Generator().manual_seed(regress_params.seed),
    )
    with tqdm(total=n, desc="regress", unit="sample") as bar:
        for dw, dy in pairs:
            eq.add(dw, dy)
            bar.update(len(dw))
    if dropped:
        log.warning(
            "regress: %d of %d samples have non-finite measurements or w and were left out (first indices: %s)",
            len(dropped),
            n,
            dropped[:10],
        )
    if eq.n < 2:
        raise ValueError(
            f"regress: only {eq.n} usable pairs ({len(dropped)} of {n} samples non-finite, first "
            f"indices {dropped[:10]}): check semantics.zarr (decompose) and latents.zarr"
        )
    ridge = regress_params.ridge * float(eq.gram.diagonal().mean())
    v = eq.solve(ridge)  # [d, k + S]
    r2 = eq.r2(v)
    out = {"directions": v[:, :k].T.contiguous(), "r2": r2[:k], "n_pairs": eq.n, "dropped": dropped}
    if regress_params.jacobian:
        out["jacobian"], out["jacobian_r2"] = v[:, k:].T.contiguous(), r2[k:]
    return out


def run(params: Params, latents_path: Path, semantics_path: Path, out: Path, metrics: Path) -> dict:
    start, regress_params = time.perf_counter(), params.regress
    latents, semantics = open_store(latents_path), open_store(semantics_path)
    names = list(semantics["semantics"].attrs["columns"])
    fit = solve(params, latents, semantics)
    v = fit["directions"]
    sig = projection_std(latents["w"], v, regress_params.chunk)
    flagged = {
        n: "constant: it does not vary over the samples, so no direction explains it (R^2 undefined)"
        for n, r in zip(names, fit["r2"])
        if not torch.isfinite(r)
    }
    for name, why in flagged.items():
        log.warning("regress: semantic %s is %s", name, why)
    if not (torch.isfinite(v).all() and torch.isfinite(sig).all()):
        raise FloatingPointError(
            "regress: a direction or sigma_w is not finite after dropping non-finite samples; nothing was written"
        )
    attrs = {
        "semantic_names": names,
        "n_pairs": fit["n_pairs"],
        "w_dim": v.shape[1],
        "flagged": flagged,
        "n_dropped": len(fit["dropped"]),
        "dropped_first": fit["dropped"][:100],
        "latents_params_hash": latents.attrs.get("params_hash"),
        "semantics_params_hash": semantics.attrs.get("params_hash"),
    }
    with write_store(out, "regress", regress_params.model_dump(), params.section_hash("regress"), **attrs) as group:
        group.create_array("directions", data=v.float().numpy())  # [14, d] Eq. 3 solutions
        group.create_array("unit", data=unit(v).float().numpy())  # [14, d]
        group.create_array("sigma_w", data=sig.float().numpy())  # [14]
        group.create_array("r2", data=fit["r2"].float().numpy())  # [14]
        for name in ("directions", "unit", "sigma_w", "r2"):
            group[name].attrs["rows"] = names
        if regress_params.jacobian:
            r = semantics["depth"].shape[-1]
            jac = fit["jacobian"].float().numpy()
            group.create_array("jacobian", data=jac, chunks=(min(len(jac), 4096), jac.shape[1]))  # [S, d]
            group["jacobian"].attrs["layout"] = {
                "depth": [1, r, r],
                "albedo": [3, r, r],
                "order": "depth then albedo, row-major per map",
            }
            group.create_array("jacobian_r2", data=fit["jacobian_r2"].float().numpy())
    result = {
        "r2": {n: round(float(x), 4) if torch.isfinite(x) else None for n, x in zip(names, fit["r2"])},
        "sigma_w": {n: round(float(x), 5) for n, x in zip(names, sig)},
        "flagged": flagged,
        "n_pairs": fit["n_pairs"],
        "n_dropped": len(fit["dropped"]),
        "scheme": regress_params.scheme,
        "ridge": regress_params.ridge,
        "seconds": round(time.perf_counter() - start, 2),
    }
    if regress_params.jacobian:
        result["jacobian_r2_mean"] = round(float(fit["jacobian_r2"].nanmean()), 4)
    write_json(metrics, result)
    return result


def main() -> None:
    args, params = stage_args(__doc__.splitlines()[0], ["latents", "semantics", "out", "metrics"])
    print(run(params, Path(args.latents), Path(args.semantics), Path(args.out), Path(args.metrics)))


if __name__ == "__main__":
    main()
