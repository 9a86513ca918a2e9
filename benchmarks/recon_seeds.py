"""The 3D decomposition over seeds: does `train_recon` train without collapse, and how spread are its figures?

Re-runs the stage itself (``python -m stages.train_recon``) on the repository's params with only
``recon.seed`` changed, for two chains:

* ``linear``: the ground-truth generator (``gan.kind: linear``), exact semantics;
* ``default``: the shipped StyleGAN2 after the default run's ``train_gan`` (2 kimg more).

Each chain's faces and generator are made once by their stages under ``--workdir``; the runs
go ``--jobs`` at a time, one torch thread each, and a finished run is not redone (rerun the
script to resume). Prints one row per run, then the median and range per chain, and with
``--json`` ends with one JSON line: ``{"chains": {chain: {"runs": [...], "median": {...},
"min": {...}, "max": {...}, "collapsed": n, "recovered": n}}}``.

    .venv/bin/python benchmarks/recon_seeds.py --seeds 0 1 2 3 4 [--chains linear default] [--json]
        [--set recon.mirror_weight=0 ...] [--workdir DIR] [--plot docs/figures/recon_seeds.png]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from store.images import save_figure  # noqa: E402

KEYS = ("side", "mad_deg", "yaw_mae_deg", "yaw_mae_extreme_deg", "light_err_deg", "yaw_corr")
CHAINS = {"linear": {"gan": {"kind": "linear"}}, "default": {}}


def params_file(path: Path, overrides: dict) -> Path:
    """params.yaml of the repository with nested ``overrides`` applied, written to ``path``."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in overrides.items():
        raw[section].update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def stage(name: str, params: Path, log: Path, threads: int, **paths: Path) -> None:
    """Run ``python -m stages.<name>`` with ``--params`` and the output paths; raise naming the log on failure."""
    args = [sys.executable, "-m", f"stages.{name}", "--params", str(params)]
    for key, value in paths.items():
        args += [f"--{key}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with log.open("w") as fh:
        done = subprocess.run(args, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"stage {name} failed (exit {done.returncode}); see {log}")


def prepare(work: Path, chain: str, threads: int) -> Path:
    """faces.zarr (shared) and the chain's generator; returns the generator's weights."""
    faces = work / "faces.zarr"
    if not (faces / "zarr.json").is_file():
        p = params_file(work / "params-faces.yaml", {})
        stage(
            "faces",
            p,
            work / "faces.log",
            threads,
            out=faces,
            report=work / "faces_report.csv",
            metrics=work / "faces.json",
        )
    gen = work / chain / "gan" / "generator.safetensors"
    if not gen.is_file():
        p = params_file(work / chain / "params.yaml", CHAINS[chain])
        stage(
            "train_gan",
            p,
            work / chain / "train_gan.log",
            threads,
            faces=faces,
            out=work / chain / "gan",
            run=work / chain / "gan_run",
            metrics=work / chain / "gan.json",
        )
    return gen


def overrides(pairs: list[str]) -> dict:
    """['recon.mirror_weight=0', ...] -> {'recon': {'mirror_weight': 0}} (values parsed as YAML)."""
    out: dict = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        section, _, name = key.partition(".")
        if not name or not _:
            raise SystemExit(f"--set takes section.key=value, got {pair!r}")
        out.setdefault(section, {})[name] = yaml.safe_load(value)
    return out


def train(work: Path, chain: str, seed: int, gen: Path, threads: int, extra: dict) -> dict:
    """One train_recon run (skipped when its recon.json exists); its metrics plus chain and seed."""
    run = work / chain / f"seed{seed}"
    metrics = run / "recon.json"
    if (run / "failed.txt").is_file() and not metrics.is_file():  # a finished run that failed: not redone
        return {"chain": chain, "seed": seed, "failed": (run / "failed.txt").read_text(), "degenerate": True}
    if not metrics.is_file():
        sections = {**CHAINS[chain], **{k: v for k, v in extra.items() if k != "recon"}}
        p = params_file(run / "params.yaml", {**sections, "recon": {**extra.get("recon", {}), "seed": seed}})
        try:
            stage(
                "train_recon",
                p,
                run / "train_recon.log",
                threads,
                generator=gen,
                faces=work / "faces.zarr",
                out=run / "recon",
                run=run / "run",
                metrics=metrics,
            )
        except RuntimeError as err:  # a Collapse past its recoveries: a result, not a crash of the benchmark
            (run / "failed.txt").write_text(str(err))
            return {"chain": chain, "seed": seed, "failed": str(err), "degenerate": True}
    return {"chain": chain, "seed": seed, **json.loads(metrics.read_text())}


def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if "failed" not in r]
    stats = {k: np.array([r[k] for r in ok if r.get(k) is not None], dtype=float) for k in KEYS}
    return {
        "runs": runs,
        "median": {k: round(float(np.median(v)), 4) for k, v in stats.items() if v.size},
        "min": {k: round(float(v.min()), 4) for k, v in stats.items() if v.size},
        "max": {k: round(float(v.max()), 4) for k, v in stats.items() if v.size},
        "collapsed": sum(bool(r.get("degenerate")) for r in runs),
        "recovered": sum(bool(r.get("recoveries")) for r in runs),
    }


def plot(runs: list[dict], path: Path) -> None:
    """Per seed: MAD and |yaw| > 45 MAE of each chain; a collapse beyond recovery drawn as an x."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    chains = sorted({r["chain"] for r in runs})
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.4), dpi=120)
    for ax, key, label in zip(axes, ("mad_deg", "yaw_mae_extreme_deg"), ("MAD (deg)", "yaw MAE, |yaw| > 45 (deg)")):
        for i, chain in enumerate(chains):
            for r in (r for r in runs if r["chain"] == chain):
                failed = "failed" in r
                y = ax.get_ylim()[1] if failed else r[key]
                ax.scatter(i + 0.08 * (r["seed"] - 2), y, marker="x" if failed else "o", color=f"C{i}", s=30)
                ax.annotate(
                    str(r["seed"]),
                    (i + 0.08 * (r["seed"] - 2), y),
                    fontsize=6,
                    xytext=(3, 2),
                    textcoords="offset points",
                )
        ax.set_xticks(range(len(chains)), chains)
        ax.set_xlim(-0.6, len(chains) - 0.4)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("train_recon over seeds (points: seeds; x: collapsed beyond recovery)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--chains", nargs="+", choices=sorted(CHAINS), default=["linear", "default"])
    ap.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "out" / "recon_seeds")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (one torch thread each)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a params override for every run (repeatable), e.g. recon.mirror_weight=0",
    )
    ap.add_argument("--plot", type=Path, help="also draw MAD and extreme-yaw error per seed into this PNG")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    extra = overrides(args.set)
    gens = {chain: prepare(args.workdir, chain, args.jobs) for chain in args.chains}
    todo = [(chain, seed) for chain in args.chains for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda cs: train(args.workdir, cs[0], cs[1], gens[cs[0]], 1, extra), todo))
    out = {"chains": {c: summarize([r for r in runs if r["chain"] == c]) for c in args.chains}}
    head = f"{'chain':8} {'seed':>4} " + " ".join(f"{k:>19}" for k in KEYS) + "  degenerate  recoveries"
    print(head)
    for r in runs:
        vals = " ".join(f"{r.get(k, float('nan')):19.4f}" for k in KEYS)
        print(f"{r['chain']:8} {r['seed']:4d} {vals}  {str(r.get('degenerate')):10}  {len(r.get('recoveries', []))}")
    for c, s in out["chains"].items():
        print(f"{c:8} median " + " ".join(f"{s['median'].get(k, float('nan')):19.4f}" for k in KEYS))
        print(
            f"{c:8} range  "
            + " ".join(f"{s['min'].get(k, np.nan):9.4f}-{s['max'].get(k, np.nan):<9.4f}" for k in KEYS)
            + f"  collapsed {s['collapsed']} of {len(s['runs'])}"
        )
    if args.plot:
        plot(runs, args.plot)
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
