"""Stage `factorize`: Eq. 5 on the Jacobian of directions.zarr -> data/components.zarr + figures.

J [S, d] (canonical depth and albedo pixels x latent dims) is balanced (depth and albedo parts
to equal Frobenius norm, ||J||_F = 1) and factorized as U V^T with sparse U [S, P] and
near-orthogonal unit V [d, P]. Components with ||u_p|| < factorize.min_norm (on that unit-norm
J) are dropped, the rest ordered by ||u_p||. components.zarr holds `unit` [K, d] (v_p, rows
named comp00, comp01, ... so `facesem edit --direction comp00` works), `sigma_w` [K], `U`
[S, K], `norms` [K], `support` [K, S] and the objective `trace`. Figures in `--figures`:
maps.png (per component its depth change, red/blue, and albedo change) and edits.png
(one row per component, s in [-edit_scale, edit_scale], Fig. 7).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from models import faces as face_model
from models.factorize import localized_components, match_directions
from models.linear_semantics import projection_std
from store.artifacts import open_store, write_json, write_store
from store.images import save_grid
from support.device import select_device
from support.edit import edit_grid
from support.figures import component_tiles
from support.generators import load_generator
from support.params import Params
from support.stage import stage_args

log = logging.getLogger("stages.factorize")


def run(
    params: Params, directions: Path, latents: Path, generator: Path, out: Path, figures: Path, metrics: Path
) -> dict:
    start, factorize_params = time.perf_counter(), params.factorize
    store = open_store(directions)
    if "jacobian" not in store:
        raise ValueError(f"{directions} has no 'jacobian': run regress with regress.jacobian: true")
    jac = torch.from_numpy(store["jacobian"][:]).double()
    r = int(store["jacobian"].attrs["layout"]["depth"][-1])
    found = localized_components(
        jac,
        [r * r, 3 * r * r],
        factorize_params.components,
        factorize_params.alpha,
        factorize_params.beta,
        balance=factorize_params.balance,
        beta_units=factorize_params.beta_units,
        min_norm=factorize_params.min_norm,
        support_frac=factorize_params.support_frac,
        solver=factorize_params.solver,
        iters=factorize_params.iters,
        tol=factorize_params.tol,
        init=factorize_params.init,
        seed=factorize_params.seed,
        **({"lr": factorize_params.adam_lr} if factorize_params.solver == "adam" else {}),
    )
    units, U, norms, support, part_scales, fac = (
        found.units,
        found.U,
        found.norms,
        found.support,
        found.part_scales,
        found.factorization,
    )
    sig = projection_std(open_store(latents)["w"], units) if len(units) else torch.zeros(0)
    names = [f"comp{i:02d}" for i in range(len(units))]
    attrs = {
        "layout": dict(store["jacobian"].attrs["layout"]),
        "part_scales": [float(x) for x in part_scales],
        "solver": factorize_params.solver,
        "iterations": fac.iterations,
        "converged": fac.converged,
        "directions_params_hash": store.attrs.get("params_hash"),
    }
    with write_store(
        out, "factorize", factorize_params.model_dump(), params.section_hash("factorize"), **attrs
    ) as group:
        group.create_array("unit", data=units.float().numpy(), chunks=(max(len(units), 1), units.shape[1]))
        group.create_array("sigma_w", data=sig.float().numpy(), chunks=(max(len(units), 1),))
        group.create_array("U", data=U.float().numpy(), chunks=(min(jac.shape[0], 4096), max(len(units), 1)))
        group.create_array("norms", data=norms.float().numpy(), chunks=(max(len(units), 1),))
        group.create_array("support", data=support.numpy(), chunks=(max(len(units), 1), jac.shape[0]))
        group.create_array("trace", data=np.asarray(fac.trace, np.float64))
        for name in ("unit", "sigma_w", "norms", "support"):
            group[name].attrs["rows"] = names
    figures.mkdir(parents=True, exist_ok=True)
    gen = load_generator(generator, select_device(params.device))
    if len(units):
        save_grid(component_tiles(U.float(), r), figures / "maps.png", ncols=min(16, 2 * len(units)), scale=3)
        shown = min(factorize_params.edit_components, len(units))
        if shown:
            scales = np.linspace(
                -factorize_params.edit_scale, factorize_params.edit_scale, factorize_params.edit_steps
            ).tolist()
            rows = [
                edit_grid(gen, units[i].float(), float(sig[i]), [factorize_params.seed], scales) for i in range(shown)
            ]
            save_grid(np.concatenate(rows), figures / "edits.png", ncols=len(scales), scale=2)
    result = {
        "kept": len(units),
        "components": factorize_params.components,
        "objective": round(float(fac.trace[-1]), 6),
        "beta_effective": round(found.beta_effective, 8),  # on the unit-norm J (factorize.beta_units)
        "jacobian_norm": round(found.jacobian_norm, 6),
        "iterations": fac.iterations,
        "converged": bool(fac.converged),
        "solver": factorize_params.solver,
        "support_px_mean": round(float(support.sum(1).float().mean()), 1) if len(units) else 0.0,
    }
    if gen.kind == "linear" and len(units):  # exact ground truth: the generator's localized directions
        truth = gen.net.directions[[face_model.FACTOR_INDEX[n] for n in face_model.LOCAL_NAMES]].cpu()
        best = match_directions(units.float(), truth.float())
        result["localized_matched_frac"] = round(float((best > 0.9).float().mean()), 4)
        result["localized_best_cos"] = {n: round(float(b), 4) for n, b in zip(face_model.LOCAL_NAMES, best)}
    result["seconds"] = round(time.perf_counter() - start, 2)
    write_json(metrics, result)
    return result


def main() -> None:
    args, params = stage_args(
        __doc__.splitlines()[0], ["directions", "latents", "generator", "out", "figures", "metrics"]
    )
    result = run(
        params,
        Path(args.directions),
        Path(args.latents),
        Path(args.generator),
        Path(args.out),
        Path(args.figures),
        Path(args.metrics),
    )
    print({k: v for k, v in result.items() if not isinstance(v, dict)})


if __name__ == "__main__":
    main()
