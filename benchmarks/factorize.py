"""Eq. 5 solvers: the fast alternating solver against the paper's Adam, same problem, same run.

Usage (from the repository root):

    .venv/bin/python benchmarks/factorize.py            # table
    .venv/bin/python benchmarks/factorize.py --json     # table, then one JSON line last
    .venv/bin/python benchmarks/factorize.py --rows 4096 --dim 128 --components 50 --adam-steps 300  # quick

Problems (both balanced to ||J||_F = 1, as stage factorize does):

* ``planted``: J = U* V*^T + noise with S rows (default 16384), d columns (512) and P (200)
  components: V* orthonormal, each u*_p supported on its own block of S / P rows;
* ``pipeline``: the Jacobian in ``--jacobian`` (a directions.zarr; default
  data/directions.zarr), skipped with a message when that store is missing.

Both solvers start from the same SVD initialisation with the same alpha, beta, P. Adam runs
``--adam-steps`` steps at the paper's lr (1e-4; the paper runs 500k steps, 25 min on a GPU);
its final objective is the target. Reported per solver: seconds to reach the target
(first traced point at or below it; the fast solver's trace is per outer iteration), final
objective, seconds in all; `speedup` = adam_s_to_target / fast_s_to_target. `planted_match`
is the mean over planted directions of the best |cos| with a fast-solver v_p.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from models.factorize import balance_parts, factorize, match_directions  # noqa: E402


def planted(S: int, d: int, P: int, noise: float, seed: int):
    """(J [S, d] with ||J||_F = 1, V* [d, P]) as in tests/test_factorize.py, at scale."""
    g = torch.Generator().manual_seed(seed)
    V, _ = torch.linalg.qr(torch.randn(d, P, generator=g, dtype=torch.float64))
    U = torch.zeros(S, P, dtype=torch.float64)
    block = S // P
    for p in range(P):
        U[p * block : (p + 1) * block, p] = torch.randn(block, generator=g, dtype=torch.float64) * (1 + p / P)
    J = U @ V.T
    J = J + noise * J.std() * torch.randn(S, d, generator=g, dtype=torch.float64)
    return J / J.norm(), V


def pipeline_jacobian(path: Path):
    from store.artifacts import open_store

    store = open_store(path)
    r = int(store["jacobian"].attrs["layout"]["depth"][-1])
    J = torch.from_numpy(store["jacobian"][:]).double()
    return balance_parts(J, [r * r, 3 * r * r])[0]


def seconds_to(fac, target: float) -> float | None:
    """Wall time of the first traced objective <= target (None: never reached)."""
    for value, sec in zip(fac.trace, fac.trace_seconds):
        if value <= target * (1 + 1e-12):
            return sec
    return None


def thin(fac, points: int = 30) -> list[tuple[float, float]]:
    """(seconds, objective) at up to ``points`` trace points spread evenly, the last included."""
    pairs = list(zip(fac.trace_seconds, fac.trace))
    step = max(1, -(-len(pairs) // points))
    return [(round(s, 3), v) for s, v in pairs[::step][: points - 1] + [pairs[-1]]]


def compare(
    name: str,
    J: torch.Tensor,
    P: int,
    alpha: float,
    beta: float,
    adam_steps: int,
    fast_iters: int,
    truth: torch.Tensor | None = None,
) -> dict:
    P = min(P, *J.shape)
    adam = factorize(
        J, P, alpha, beta, solver="adam", iters=adam_steps, lr=1e-4, tol=0.0, log_every=max(1, adam_steps // 50)
    )
    fast = factorize(J, P, alpha, beta, solver="fast", iters=fast_iters, tol=1e-7)
    target = adam.trace[-1]
    fs, as_ = seconds_to(fast, target), seconds_to(adam, target)
    row = {
        "problem": name,
        "S": J.shape[0],
        "d": J.shape[1],
        "P": P,
        "target": target,
        "fast_s_to_target": fs,
        "adam_s_to_target": as_,
        "speedup": (as_ / fs) if fs and as_ else None,
        "fast_final": fast.trace[-1],
        "adam_final": adam.trace[-1],
        "start": fast.trace[0],
        "fast_s": fast.trace_seconds[-1],
        "fast_iters": fast.iterations,
        "adam_s": adam.trace_seconds[-1],
        "adam_steps": adam.iterations,
        "fast_curve": thin(fast),
        "adam_curve": thin(adam),
    }
    if truth is not None:
        row["planted_match"] = float(match_directions(fast.V.T, truth.T).mean())
        row["planted_match_adam"] = float(match_directions(adam.V.T, truth.T).mean())
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16384, help="S (planted problem)")
    ap.add_argument("--dim", type=int, default=512, help="d (planted problem)")
    ap.add_argument("--components", type=int, default=200, help="P")
    ap.add_argument("--alpha", type=float, default=0.002)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--adam-steps", type=int, default=1000)
    ap.add_argument("--fast-iters", type=int, default=300)
    ap.add_argument("--jacobian", type=Path, default=Path("data/directions.zarr"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))

    J, V = planted(args.rows, args.dim, args.components, args.noise, args.seed)
    rows = [compare("planted", J, args.components, args.alpha, args.beta, args.adam_steps, args.fast_iters, V)]
    if args.jacobian.exists():
        rows.append(
            compare(
                "pipeline",
                pipeline_jacobian(args.jacobian),
                args.components,
                args.alpha,
                args.beta,
                args.adam_steps,
                args.fast_iters,
            )
        )
    else:
        print(f"(no {args.jacobian}: pipeline problem skipped; run `dvc repro regress` or pass --jacobian)")

    def fmt(x, spec=".3f"):
        return "never" if x is None else format(x, spec)

    print(
        f"{'problem':9} {'S x d, P':>17} {'start F':>9} {'adam F':>9} {'fast F':>9} "
        f"{'adam s':>8} {'fast s':>8} {'fast s->tgt':>11} {'speedup':>8}"
    )
    for r in rows:
        print(
            f"{r['problem']:9} {r['S']:>7} x {r['d']:<4}{r['P']:>4} {r['start']:9.5f} {r['adam_final']:9.5f} "
            f"{r['fast_final']:9.5f} {r['adam_s']:8.1f} {r['fast_s']:8.2f} {fmt(r['fast_s_to_target']):>11} "
            f"{fmt(r['speedup'], '.0f'):>8}"
        )
    print(
        f"adam: {args.adam_steps} steps at lr 1e-4 (its final F is the target); fast: alternating ISTA / sphere "
        f"gradient, {rows[0]['fast_iters']} outer iterations on the planted problem"
    )
    if "planted_match" in rows[0]:
        print(
            f"planted directions matched (mean best |cos|): fast {rows[0]['planted_match']:.4f}, "
            f"adam {rows[0]['planted_match_adam']:.4f}"
        )
    if args.json:
        head = rows[0]
        print(
            json.dumps(
                {
                    "fast_s_to_target": head["fast_s_to_target"],
                    "adam_s_to_target": head["adam_s_to_target"],
                    "speedup": head["speedup"],
                    "planted_match": head["planted_match"],
                    "machine": platform.processor() or platform.machine(),
                    "threads": torch.get_num_threads(),
                    "problems": rows,
                }
            )
        )


if __name__ == "__main__":
    main()
