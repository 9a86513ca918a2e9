"""Stage `report`: data/report/index.html, one self-contained page of what the pipeline found.

Reads the other stages' outputs under `--data` (metrics JSON, CSV tables, PNG figures, the
generator and directions.zarr), draws the univariate edit rows (Fig. 1/4) and the training
curves, and writes `--out`: index.html (images embedded), summary.md (the headline tables, for
the Prefect flow run's artifacts) and the PNGs it drew. An output a stage did not produce is
shown as missing (named), not silently dropped.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from store.artifacts import git_revision, open_store, read_json
from store.datasets import resize_uint8
from store.images import save_figure, save_grid
from support.device import select_device
from support.edit import edit_grid, load_direction
from support.generators import load_generator
from support.html import Section, markdown_table, render
from support.params import Params
from support.project import project_root, stage_names
from support.stage import stage_args

log = logging.getLogger("stages.report")


def read_csv(path: Path, index: str) -> pd.DataFrame | None:
    return pd.read_csv(path, index_col=index) if path.is_file() else None


PAGE_SIDE = 128  # largest image side in the page's edit grids (bigger generations: a downsized copy)
STORE_OF_STAGE = {"sample_latents": "latents.zarr", "decompose": "semantics.zarr"}  # time in the store's attrs


def stage_times(metrics: dict[str, dict], stages: list[str], data: Path | None = None) -> pd.DataFrame:
    """Seconds per stage as the stages record them: `seconds` of their metrics JSON, or of their
    Zarr store's attrs (STORE_OF_STAGE, under `data`); blank where none is (preview)."""
    files = {"train_gan": "gan", "train_oracle": "oracle", "train_recon": "recon"}
    rows = {s: metrics.get(files.get(s, s), {}).get("seconds") for s in stages}
    for stage, store in STORE_OF_STAGE.items():
        if stage in rows and data is not None and (data / store).exists():
            rows[stage] = open_store(data / store).attrs.get("seconds")
    return pd.DataFrame({"seconds": pd.Series(rows, dtype="float64")}).rename_axis("stage")


def curves_figure(csv: Path, x: str, columns: list[str], path: Path, title: str) -> Path | None:
    """Line plots of `columns` of a training-curve CSV against `x` (one panel each)."""
    if not csv.is_file():
        return None
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    frame = pd.read_csv(csv)
    columns = [c for c in columns if c in frame.columns]
    if not columns or x not in frame.columns:
        return None
    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 2.6), dpi=100, squeeze=False)
    for ax, col in zip(axes[0], columns):
        ax.plot(frame[x], frame[col], lw=1)
        ax.set_title(col, fontsize=9)
        ax.set_xlabel(x, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def edit_ranges(report_params, evaluation: dict) -> tuple[dict[str, float], dict[str, str]]:
    """|s| per edit row, and the directions left out with the reason.

    With report.target_stds, a direction's row reaches s_d = target_stds / (its semantic's data stds
    per unit s, evaluate.json `edit`), at most report.scale; entangled directions (evaluate.json
    `entangled`) are left out, unless all are (then all are drawn, and said so). Without it, or
    before evaluate ran, every row spans report.scale."""
    ranges, left_out = {}, {}
    for name in report_params.directions:
        moved = evaluation.get("edit", {}).get(name, {}).get("target_std_per_s")
        if report_params.target_stds is None or not moved:
            ranges[name] = report_params.scale
            continue
        ranges[name] = min(report_params.scale, report_params.target_stds / abs(moved))
        if name in evaluation.get("entangled", {}):
            e = evaluation["entangled"][name]
            left_out[name] = f"entangled: moves {e['moves_more']} more than {name}"
    if len(left_out) == len(ranges):  # nothing would be drawn: draw them all, flagged
        return ranges, {k: v + "; drawn anyway, as every direction is" for k, v in left_out.items()}
    return {k: v for k, v in ranges.items() if k not in left_out}, left_out


def univariate_edits(params: Params, data: Path, path: Path, evaluation: dict) -> tuple[list[str], dict[str, str]]:
    """Rows: (direction, seed); columns: s from -s_d to s_d (Fig. 1/4, `edit_ranges`).
    Returns the row labels and the directions left out with the reason."""
    report_params = params.report
    gen = load_generator(data / "gan" / "generator.safetensors", select_device(params.device))
    ranges, left_out = edit_ranges(report_params, evaluation)
    rows, labels = [], []
    for name, s_max in ranges.items():
        v, sigma = load_direction(data / "directions.zarr", name)
        scales = np.linspace(-s_max, s_max, report_params.steps).tolist()
        rows.append(edit_grid(gen, v.float(), sigma, report_params.seeds, scales))
        labels += [f"{name} (seed {s}, |s| <= {s_max:.2g})" for s in report_params.seeds]
    grid = np.concatenate(rows)  # uint8 [rows * cols, 3, R, R] at the generator's resolution
    if gen.resolution > PAGE_SIDE:  # the full-resolution grid beside the page; the page shows a downsized copy
        save_grid(grid, path.with_name(f"{path.stem}_full.png"), ncols=report_params.steps)
        grid = resize_uint8(torch.from_numpy(grid), PAGE_SIDE).numpy()
    save_grid(grid, path, ncols=report_params.steps, scale=max(1, 96 // min(gen.resolution, PAGE_SIDE)))
    return labels, left_out


def run(params: Params, data: Path, out: Path) -> dict:
    start = time.perf_counter()
    root = project_root()
    out.mkdir(parents=True, exist_ok=True)
    metrics = {p.stem: read_json(p) for p in sorted((data / "metrics").glob("*.json"))}
    stages = stage_names(root)
    gan, recon, ev = metrics.get("gan", {}), metrics.get("recon", {}), metrics.get("evaluate", {})
    fact, clus = metrics.get("factorize", {}), metrics.get("cluster", {})
    sections, summary = [], []

    run_info = Section("What was run")
    run_info.text(
        f"git revision {git_revision(root)}; params hash {params.section_hash()}; generator kind "
        f"{params.gan.kind}; device {params.device}; report written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}."
    )
    times = stage_times(metrics, stages, data)
    run_info.table(
        times,
        "Seconds per stage, as each stage records them (sample_latents, decompose: summed over "
        "chunks; blank: none recorded)",
        1,
    )
    run_info.blocks.append(
        "<details><summary>params.yaml (resolved)</summary><pre>"
        + json.dumps(params.model_dump(), indent=1)
        + "</pre></details>"
    )
    sections.append(run_info)

    samples = Section("Data and generations")
    samples.image(data / "previews" / "faces.png", "Training faces (data/faces.zarr)")
    samples.image(data / "gan" / "samples.png", f"Generations of the {params.gan.kind} generator (fixed seeds)")
    curves = curves_figure(
        data / "gan_run" / "curves.csv",
        "kimg",
        ["loss_G", "loss_D", "decorr", "mean_abs_rho"],
        out / "gan_curves.png",
        "GAN training",
    )
    if curves:
        samples.image(curves, "GAN training curves (data/gan_run/curves.csv; `dvc plots show` draws them too)")
    sections.append(samples)

    table1 = pd.DataFrame(
        {k: [gan.get(k)] for k in ("kimg", "fid", "ppl", "mean_abs_rho") if k in gan}, index=["ours"]
    ).rename_axis("model")
    t1 = Section("Table 1: GAN quality").table(table1, "FID, PPL and W's mean |correlation|")
    spaces = "; ".join(f"{k}: {v}" for k, v in gan.items() if k.endswith("_space"))
    t1.text(
        f"Feature spaces: {spaces or 'not recorded'}. Small-sample figures on our faces: not comparable to "
        "published FFHQ numbers.",
        reading=True,
    )
    sections.append(t1)
    summary.append("## Table 1: GAN quality\n\n" + markdown_table(table1))

    rec = Section("3D decomposition (Fig. 2 and 5)")
    if recon.get("degenerate"):
        rec.warning(
            "DEGENERATE decomposition: "
            + "; ".join(recon.get("degenerate_reasons", []))
            + ". Every direction below inherits it."
        )
    elif "degenerate" in recon:
        rec.text(
            f"Verdict: healthy (no collapse sign on the probe images; exported step {recon.get('exported_step')}).",
            reading=True,
        )
    if recon.get("hollow_face"):
        rec.warning(
            "Hollow face: the estimated yaw is anti-correlated with the true one "
            f"(r = {recon.get('yaw_corr', 0):.2f}), the concave/convex flip of a face seen from the front; "
            "depth and view directions are inverted."
        )
    for r in recon.get("recoveries", []):
        rec.warning(
            f"Collapse at step {r['step']} ({'; '.join(r['reasons'])}); training restarted from step "
            f"{r['restart_step']} with seed {r['seed']}."
        )
    rec.image(
        data / "recon" / "panel.png", "Input, reconstruction, canonical albedo, canonical depth (shaded), confidence"
    )
    rec.image(data / "recon" / "yaw_scatter.png", "Estimated against true yaw on rendered faces (Fig. 5)")
    keys = ["side", "mad_deg", "yaw_mae_deg", "yaw_mae_extreme_deg", "light_err_deg"]
    rec_table = pd.DataFrame({k: [recon.get(k)] for k in keys if k in recon}, index=["ours"]).rename_axis("model")
    rec.table(rec_table, "Against ground truth on rendered synthetic faces", 4)
    if "side" in recon:
        rec.text(
            f"SIDE {recon['side']:.4f} and MAD {recon['mad_deg']:.1f} deg (Unsup3D on its synthetic faces: "
            f"0.0079, 16.5 deg); yaw error {recon.get('yaw_mae_deg', float('nan')):.1f} deg overall, "
            f"{recon.get('yaw_mae_extreme_deg', float('nan')):.1f} deg where |yaw| > 45 deg.",
            reading=True,
        )
    if recon.get("estimate_r"):
        est = pd.DataFrame({k: [v] for k, v in recon["estimate_r"].items()}, index=["r"]).rename_axis("estimate")
        caption = "Pearson r of each view and light estimate with the truth on rendered faces (how well each is read)"
        rec.table(est, caption, 3)
    sections.append(rec)

    uni = Section("Univariate manipulations (Fig. 1 and 4)")
    edits = out / "univariate_edits.png"
    try:
        labels, left_out = univariate_edits(params, data, edits, ev)
        reach = (
            f"s from -s_d to s_d sigma_w, s_d moving the direction's semantic {params.report.target_stds:g} data stds "
            f"(at most {params.report.scale:g})"
            if params.report.target_stds is not None
            else f"s from -{params.report.scale:g} to {params.report.scale:g} sigma_w"
        )
        uni.image(edits, f"Eq. 4 edits, {reach}; rows: " + ", ".join(labels))
        if left_out:
            uni.warning("Entangled: " + "; ".join(f"{k} ({v})" for k, v in left_out.items()) + ".")
    except (FileNotFoundError, KeyError, ValueError) as err:
        uni.text(f"not drawn: {err}")
    sections.append(uni)

    table2 = read_csv(data / "evaluate" / "table2.csv", "direction")
    t2 = Section("Table 2, extended: Pearson r of w.v with the oracle's measurement")
    if table2 is not None:
        t2.table(table2, "Rows: learned directions; columns: measured semantics (paper: yaw 0.9458, pitch 0.7647)")
        t2.text(
            f"Diagonal mean |r| {ev.get('table2_diag_mean_abs', float('nan')):.3f}, off-diagonal "
            f"{ev.get('table2_offdiag_mean_abs', float('nan')):.3f} (paper: off-diagonal mostly under 0.13); "
            f"oracle-flagged factors: {', '.join(ev.get('flagged', [])) or 'none'}.",
            reading=True,
        )
        shared = [n for n in table2.index if n in table2.columns]  # the landmark oracle measures pose only
        diag = pd.DataFrame({"r": [table2.loc[n, n] for n in shared]}, index=shared)
        if ev.get("oracle") == "landmarks":
            t2.text(
                f"Measured with the landmark oracle on the {ev.get('n_measured')} of {ev.get('n_samples')} generations "
                f"where a face was found; not measured: {', '.join(ev.get('not_measured', []))} "
                f"({ev.get('not_measured_reason', '')}).",
                reading=True,
            )
        summary.append("## Table 2 (diagonal)\n\n" + markdown_table(diag))
        tangled = ev.get("entangled", {})
        if tangled:
            said = "; ".join(
                f"{d} moves {e['moves_more']} more than {d} ({e['other']:.2f} vs {e['own']:.2f} data stds per unit s)"
                for d, e in tangled.items()
            )
            t2.warning(f"Entangled directions ({len(tangled)} of {len(table2)}): {said}.")
            summary.append(f"Entangled directions: {said}.")
    elif ev.get("skipped"):
        t2.warning(f"Not measured: {ev.get('reason', 'evaluate was skipped')}.")
        summary.append(f"## Table 2\n\nNot measured: {ev.get('reason', 'evaluate was skipped')}.")
    else:
        t2.text("missing: data/evaluate/table2.csv")
    if "linear_recovery_cos" in ev:
        rc = pd.DataFrame({"cos": ev["linear_recovery_cos"]}).rename_axis("semantic")
        t2.table(rc, "Linear generator: cosine of each recovered direction with the true one")
        t2.text(f"Mean cosine {rc['cos'].mean():.3f} over the 14 semantics.", reading=True)
        summary.append("## Recovery on the linear generator\n\n" + markdown_table(rc))
    peers = read_csv(data / "evaluate" / "peers.csv", "semantic")
    if peers is not None:
        t2.table(peers, "Best |r| per semantic: ours, GANSpace, SeFa (first K directions), InterFaceGAN (supervised)")
        num = peers.select_dtypes("number")
        t2.text("Mean best |r|: " + ", ".join(f"{c} {num[c].mean():.3f}" for c in num.columns) + ".", reading=True)
        summary.append("## Peers (best |r|)\n\n" + markdown_table(num))
    sections.append(t2)

    loc = Section("Localized components and their clusters (Fig. 6 and 7)")
    loc.image(data / "factorize" / "maps.png", "Each kept component: depth change (red up, blue down), albedo change")
    loc.image(data / "clusters" / "dendrogram.png", "Ward clustering on 1 - |cos(v_i, v_j)| with albedo thumbnails")
    loc.image(data / "clusters" / "supports.png", "Union of supports per flat cluster")
    loc.image(data / "factorize" / "edits.png", "Edits along each component, s in [-4, 4] (Fig. 7)")
    loc.text(
        f"{fact.get('kept', '?')} of {fact.get('components', '?')} components kept; {clus.get('n_clusters', '?')} "
        f"clusters, purity {clus.get('purity', 'n/a')}"
        + (
            f"; true localized factors matched above 0.9: {fact['localized_matched_frac']:.0%}"
            if "localized_matched_frac" in fact
            else ""
        )
        + ".",
        reading=True,
    )
    within, across = clus.get("cos_within_region"), clus.get("cos_across_region")
    if within is not None and across is not None and within - across < 0.05:
        loc.warning(
            f"Flat dendrogram: directions of the same face region are no more aligned than directions of "
            f"different regions (mean |cos| {within:.3f} vs {across:.3f}), so W holds no region structure for "
            "Ward clustering to find; the clusters below are not regions."
        )
    if clus.get("purity") is not None and clus.get("purity_one_cluster") is not None:
        if clus["purity"] <= clus["purity_one_cluster"] + 1e-9:
            loc.warning(
                f"Cluster purity {clus['purity']:.2f} is no better than putting every component in one cluster "
                f"({clus['purity_one_cluster']:.2f})."
            )
    if "components" in ev:
        loc.table(
            pd.DataFrame(ev["components"]).T.rename_axis("component"),
            "The oracle factor each component moves most (std per unit s) and the runner-up",
        )
    sections.append(loc)

    page = render(
        "facesem report",
        "Unsupervised disentanglement of linear-encoded facial semantics "
        "(Zheng et al., CVPR 2021), reproduced by this pipeline.",
        sections,
    )
    tmp = out / ".index.html.tmp"
    tmp.write_text(page)
    tmp.replace(out / "index.html")
    (out / "summary.md").write_text("\n\n".join(summary) + "\n")
    result = {
        "sections": len(sections),
        "bytes": len(page),
        "missing": page.count('class="missing"'),
        "seconds": round(time.perf_counter() - start, 2),
    }
    log.info("wrote %s (%d bytes, %d missing inputs)", out / "index.html", result["bytes"], result["missing"])
    return result


def main() -> None:
    args, params = stage_args(__doc__.splitlines()[0], ["data", "out"])
    print(run(params, Path(args.data), Path(args.out)))


if __name__ == "__main__":
    main()
