"""Table 1 of the paper for our generators: FID, PPL and mean |rho_ij| of W, plus pose spread.

Usage (from the repository root, after `make run`, which writes data/faces.zarr and
data/oracle):

    .venv/bin/python benchmarks/table1.py GEN [GEN ...]                 # table
    .venv/bin/python benchmarks/table1.py GEN [GEN ...] --json          # table, one JSON line last
    .venv/bin/python benchmarks/table1.py data/shipped/stylegan2_faces32.safetensors --n 200 --pairs 50

Every generator is scored on the same samples, so rows compare at equal n (small-sample FID
is biased upward; only rows from one run of this script are comparable):

* ``fid_seed11`` / ``fid_seed12``: Frechet distance in Inception-v3 pool3 space between
  ``--n`` training faces (one shared set) and ``--n`` generations, for two latent seeds (their
  gap is the sampling noise);
* ``ppl`` / ``ppl_median``: perceptual path length in W over ``--pairs`` pairs (eps 1e-4,
  squared L2 of the same Inception features, the stage's definition);
* ``mean_abs_rho``: mean |Pearson rho_ij| over pairs of W's coordinates, 4096 samples;
* with ``--oracle``: per pose angle, the generated std / the data's std (both measured by the
  oracle) and the held-out r of a least-squares direction in W (fit on half, scored on half).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.decorrelation import mean_abs_rho  # noqa: E402
from models.gan_metrics import feature_statistics, frechet_distance, path_length, ppl_summary  # noqa: E402
from models.peers import interfacegan, pearson  # noqa: E402
from store.artifacts import open_store  # noqa: E402
from store.datasets import resize_uint8, to_unit  # noqa: E402
from support.generators import load_generator  # noqa: E402
from support.inception import FEATURE_SPACE, inception_features, inception_sq_distance  # noqa: E402
from support.measure import Measure  # noqa: E402
from support.oracle import load_oracle, predict  # noqa: E402

POSE = ("yaw", "pitch", "roll")


def _sample_w(gen, n: int, seed: int, batch: int = 250) -> torch.Tensor:
    z = torch.randn(n, gen.z_dim, generator=torch.Generator().manual_seed(seed))
    return torch.cat([gen.mapping(z[i : i + batch]) for i in range(0, n, batch)])  # [n, w_dim]


def _synthesize(gen, w: torch.Tensor, batch: int = 64) -> torch.Tensor:
    return torch.cat([gen.synthesis(w[i : i + batch]) for i in range(0, len(w), batch)])  # [n, 3, r, r] in [-1, 1]


def score(gen, real_stats, n: int, pairs: int, oracle_dir: Path | None = None, real_pose=None) -> dict:
    """One Table 1 row for generator ``gen`` (see the module docstring for the keys)."""
    row = {}
    with torch.no_grad():
        for seed in (11, 12):
            fake = _synthesize(gen, _sample_w(gen, n, seed))
            row[f"fid_seed{seed}"] = round(
                frechet_distance(*real_stats, *feature_statistics(inception_features(fake, "cpu"))), 2
            )
        row["mean_abs_rho"] = round(float(mean_abs_rho(_sample_w(gen, 4096, 13))), 4)
        g = torch.Generator().manual_seed(14)
        z = torch.randn(2 * pairs, gen.z_dim, generator=g)
        lengths = path_length(gen.mapping, gen.synthesis, inception_sq_distance, z, generator=g)
        row["ppl"] = round(ppl_summary(lengths), 1)
        row["ppl_median"] = round(float(lengths.median()), 1)
        if oracle_dir is not None:
            w = _sample_w(gen, n, 7)
            y = Measure(gen, oracle_dir, 250, "cpu", list(POSE))(w)  # [n, 3] degrees
            h = n // 2
            r = pearson(w[h:] @ interfacegan(w[:h], y[:h]).T, y[h:]).diagonal()
            for i, k in enumerate(POSE):
                row[f"{k}_std_ratio"] = round(float(y[:, i].std() / real_pose[:, i].std()), 3)
                row[f"{k}_r"] = round(float(r[i]), 3)
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("generators", nargs="+", type=Path, help="generator .safetensors files (with .json sidecars)")
    ap.add_argument("--faces", type=Path, default=Path("data/faces.zarr"), help="training faces store")
    ap.add_argument("--oracle", type=Path, default=None, help="oracle directory (stage train_oracle) for pose columns")
    ap.add_argument("--n", type=int, default=1000, help="reals and generations per FID (default 1000)")
    ap.add_argument("--pairs", type=int, default=300, help="PPL pairs (default 300)")
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    for path in args.generators:
        if not path.exists():
            sys.exit(f"table1: generator {path} does not exist")
    generators = [load_generator(path) for path in args.generators]
    resolution = generators[0].resolution
    if any(gen.resolution != resolution for gen in generators):
        sys.exit("table1: the generators differ in resolution; FID rows would not compare")
    images = open_store(args.faces)["images"]
    if images.shape[0] < args.n:
        sys.exit(f"table1: --n {args.n} is more than the {images.shape[0]} faces in {args.faces}")
    idx = np.sort(np.random.default_rng(0).choice(images.shape[0], args.n, replace=False))
    real = resize_uint8(torch.from_numpy(images[idx]), resolution)  # [n, 3, r, r] uint8
    real_stats = feature_statistics(inception_features(to_unit(real), "cpu"))
    real_pose = None
    if args.oracle is not None:
        net, names = load_oracle(args.oracle)
        real_pose = predict(net, real, "cpu", 250)[:, [names.index(k) for k in POSE]]
    rows = {}
    for path, gen in zip(args.generators, generators):
        t0 = time.perf_counter()
        rows[str(path)] = score(gen, real_stats, args.n, args.pairs, args.oracle, real_pose)
        rows[str(path)]["seconds"] = round(time.perf_counter() - t0, 1)
    keys = list(next(iter(rows.values())))
    print(f"space: {FEATURE_SPACE}; n={args.n} reals vs n generations; PPL {args.pairs} pairs in W")
    print("| generator | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for path, row in rows.items():
        print(f"| {path} | " + " | ".join(str(row[k]) for k in keys) + " |")
    if args.json:
        print(json.dumps({"feature_space": FEATURE_SPACE, "n": args.n, "pairs": args.pairs, "rows": rows}))


if __name__ == "__main__":
    main()
