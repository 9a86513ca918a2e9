"""The pipeline DAG, read from dvc.yaml through DVC's own graph (no second copy)."""

from __future__ import annotations

from graphlib import TopologicalSorter
from pathlib import Path


def load_dag(root: str | Path, targets: list[str] | None = None) -> dict[str, list[str]]:
    """{stage: [upstream stages]} in topological order.

    With `targets`, only those stages and everything upstream of them; an unknown target
    raises KeyError naming the stages that exist.
    """
    from dvc.repo import Repo  # heavy import, kept local

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edge (a, b): stage a depends on stage b
        upstream: dict[str, set[str]] = {s.addressing: set() for s in graph.nodes}
        for a, b in graph.edges:
            upstream[a.addressing].add(b.addressing)
    if targets:
        unknown = [t for t in targets if t not in upstream]
        if unknown:
            raise KeyError(f"unknown stage(s) {unknown}; dvc.yaml declares {sorted(upstream)}")
        keep: set[str] = set()
        todo = list(targets)
        while todo:
            name = todo.pop()
            if name not in keep:
                keep.add(name)
                todo.extend(upstream[name])
        upstream = {k: v for k, v in upstream.items() if k in keep}
    order = TopologicalSorter(upstream).static_order()
    return {name: sorted(upstream[name]) for name in order}
