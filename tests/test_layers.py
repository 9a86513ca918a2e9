"""The tree shows the roles: each package imports only the layers below it, and no module cycle.

models <- store <- support <- stages; tools and pipeline (orchestration) on top; benchmarks use
models, store and support, never a stage or the orchestration.
"""

from __future__ import annotations

from graphlib import CycleError, TopologicalSorter

import pytest

from pipeline.code_deps import import_graph
from tests.conftest import REPO

MAY_IMPORT = {
    "models": {"models"},
    "store": {"models", "store"},
    "support": {"models", "store", "support"},
    "stages": {"models", "store", "support"},
    "tools": {"models", "store", "support", "tools"},
    "pipeline": {"models", "store", "support", "tools", "pipeline"},
    "benchmarks": {"models", "store", "support"},
}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """'importer -> imported' for every import that goes up or sideways (a stage importing a stage)."""
    bad = []
    for module, imported in graph.items():
        layer = module.split(".")[0]
        for other in sorted(imported):
            top = other.split(".")[0]
            stage_to_stage = layer == top == "stages" and other != "stages"
            if top not in MAY_IMPORT[layer] or stage_to_stage:
                bad.append(f"{module} -> {other}")
    return sorted(bad)


def test_every_import_goes_down_the_layers():
    graph = import_graph(REPO)
    assert {m.split(".")[0] for m in graph} == set(MAY_IMPORT)
    assert layer_violations(graph) == []


def test_no_module_import_cycle():
    graph = import_graph(REPO)
    TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle


def test_a_planted_violation_and_a_planted_cycle_are_caught(tmp_path):
    for package in MAY_IMPORT:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "stages" / "a.py").write_text("from stages.b import x\n")  # a stage importing a stage
    (tmp_path / "stages" / "b.py").write_text("import pipeline.flow\nx = 1\n")  # a stage importing orchestration
    (tmp_path / "pipeline" / "flow.py").write_text("from pipeline import shard_flow\n")
    (tmp_path / "pipeline" / "shard_flow.py").write_text("def f():\n    from pipeline.flow import g\n")
    (tmp_path / "benchmarks" / "t.py").write_text("from stages.a import run\n")
    graph = import_graph(tmp_path)
    assert layer_violations(graph) == ["benchmarks.t -> stages.a", "stages.a -> stages.b", "stages.b -> pipeline.flow"]
    with pytest.raises(CycleError):
        TopologicalSorter(graph).prepare()
