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


def train(work: Path, chain: str, seed: int, gen: Path, threads: int) -> dict:
    """One train_recon run (skipped when its recon.json exists); its metrics plus chain and seed."""
    run = work / chain / f"seed{seed}"
    metrics = run / "recon.json"
    if not metrics.is_file():
        p = params_file(run / "params.yaml", {**CHAINS[chain], "recon": {"seed": seed}})
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--chains", nargs="+", choices=sorted(CHAINS), default=["linear", "default"])
    ap.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "out" / "recon_seeds")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (one torch thread each)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    gens = {chain: prepare(args.workdir, chain, args.jobs) for chain in args.chains}
    todo = [(chain, seed) for chain in args.chains for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda cs: train(args.workdir, cs[0], cs[1], gens[cs[0]], 1), todo))
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
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
