"""Streaming regression (stage regress) against numpy.linalg.lstsq on materialised matrices.

Usage (from the repository root):

    .venv/bin/python benchmarks/regress.py            # table
    .venv/bin/python benchmarks/regress.py --json     # table, then one JSON line last
    .venv/bin/python benchmarks/regress.py --pairs 4000 --dim 128 --outputs 2048   # quick

The problem is the regress stage's at scale: N pairs (default 20000), latent dimension d
(512) and S outputs (16384: a 64x64 depth + albedo Jacobian), with planted
dY = dW A + noise. Both methods see the same float64 data, generated chunk by chunk from a
seed (generation time is not counted, for either):

* ``stream``: ``models.linear_semantics.NormalEquations`` accumulating chunks of
  ``--chunk`` pairs, then one solve; memory O(d^2 + d S);
* ``lstsq``: ``numpy.linalg.lstsq(dW, dY)`` with dW [N, d] and dY [N, S] in memory.

Each runs in a fresh child process; peak memory is the child's peak RSS minus that of a
child with the same imports that only builds A (its baseline). Also reported: the largest
difference of the two solutions and the error against the planted A.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _chunks(n, d, s, chunk, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, s)) / np.sqrt(d)
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        dw = rng.standard_normal((m, d))
        yield a, dw, dw @ a + 0.01 * rng.standard_normal((m, s))


def _stream(n, d, s, chunk, seed, out):
    import torch

    from models.linear_semantics import NormalEquations

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    eq, spent, a = NormalEquations(d, s), 0.0, None
    for a, dw, dy in _chunks(n, d, s, chunk, seed):  # noqa: B007  (a: the last chunk, kept for the solve)
        t0 = time.perf_counter()
        eq.add(torch.from_numpy(dw), torch.from_numpy(dy))
        spent += time.perf_counter() - t0
    t0 = time.perf_counter()
    v = eq.solve().numpy()
    spent += time.perf_counter() - t0
    out.put(_report(spent, v, a, "stream"))


def _lstsq(n, d, s, chunk, seed, out):
    import numpy as np

    parts = list(_chunks(n, d, s, chunk, seed))
    a = parts[0][0]
    dw = np.concatenate([p[1] for p in parts])
    dy = np.concatenate([p[2] for p in parts])
    del parts
    t0 = time.perf_counter()
    v = np.linalg.lstsq(dw, dy, rcond=None)[0]
    out.put(_report(time.perf_counter() - t0, v, a, "lstsq"))


def _baseline(n, d, s, chunk, seed, with_torch, out):
    """A child with the same imports and A, no regression: the RSS every child starts from."""
    if with_torch:
        import torch  # noqa: F401

        from models.linear_semantics import NormalEquations  # noqa: F401
    next(_chunks(min(n, chunk), d, s, chunk, seed))
    out.put(_report(0.0, None, None, ""))


def _report(seconds, v, a, name):
    import numpy as np

    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    res = {"seconds": seconds, "rss_mb": rss_mb}
    if v is not None:
        res["max_err_vs_truth"] = float(np.abs(v - a).max())
        res["solution"] = os.environ["BENCH_TMP"] + f"/{name}.npy"
        np.save(res["solution"], v)
    return res


def _child(fn, args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(*args, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main() -> None:
    import tempfile

    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--outputs", type=int, default=16384)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    shape = (args.pairs, args.dim, args.outputs, args.chunk, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BENCH_TMP"] = tmp
        base = {"stream": _child(_baseline, (*shape, True)), "lstsq": _child(_baseline, (*shape, False))}
        stream = _child(_stream, shape)
        lstsq = _child(_lstsq, shape)
        diff = float(np.abs(np.load(stream["solution"]) - np.load(lstsq["solution"])).max())
    peak = {k: max(r["rss_mb"] - base[k]["rss_mb"], 0.0) for k, r in (("stream", stream), ("lstsq", lstsq))}
    print(
        f"regression: N = {args.pairs} pairs, d = {args.dim}, S = {args.outputs} outputs, float64; "
        f"{platform.processor() or platform.machine()}, load {os.getloadavg()[0]:.2f}"
    )
    print(f"{'method':<8} {'seconds':>9} {'peak MB':>9} {'max |v - A|':>12}")
    for name, r in (("stream", stream), ("lstsq", lstsq)):
        print(f"{name:<8} {r['seconds']:>9.2f} {peak[name]:>9.0f} {r['max_err_vs_truth']:>12.2e}")
    print(
        f"stream / lstsq: time x{stream['seconds'] / lstsq['seconds']:.2f}, "
        f"memory x{peak['stream'] / max(peak['lstsq'], 1e-9):.3f}; max |v_stream - v_lstsq| = {diff:.2e} "
        f"(baseline RSS subtracted: {base['stream']['rss_mb']:.0f} MB with torch, "
        f"{base['lstsq']['rss_mb']:.0f} MB numpy)"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "pairs": args.pairs,
                    "dim": args.dim,
                    "outputs": args.outputs,
                    "stream_s": round(stream["seconds"], 3),
                    "lstsq_s": round(lstsq["seconds"], 3),
                    "stream_peak_mb": round(peak["stream"], 1),
                    "lstsq_peak_mb": round(peak["lstsq"], 1),
                    "max_abs_diff": diff,
                    "load_1min": os.getloadavg()[0],
                }
            )
        )


if __name__ == "__main__":
    main()
