"""dvc.yaml lists exactly each stage's code: its project import closure (pipeline/code_deps.py)."""

from __future__ import annotations

import shutil

import yaml

from pipeline.code_deps import PACKAGES, import_closure, stage_closures, sync_deps
from tests.conftest import REPO


def _python_deps(doc, name):
    return {d for d in doc["stages"][name].get("deps", []) if isinstance(d, str) and d.endswith(".py")}


def _mismatches(root):
    doc = yaml.safe_load((root / "dvc.yaml").read_text())
    closures = stage_closures(root, doc)
    return {
        name: (sorted(c - _python_deps(doc, name)), sorted(_python_deps(doc, name) - c))
        for name, c in closures.items()
        if c != _python_deps(doc, name)
    }


def test_dvc_yaml_lists_exactly_each_stages_import_closure():
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert set(stage_closures(REPO, doc)) == set(doc["stages"])  # every stage runs `python -m stages.X`
    assert _mismatches(REPO) == {}, "run `facesem dag --sync-deps`"


def test_the_closure_follows_imports_inside_functions_and_packages():
    closure = import_closure(REPO, "stages.decompose")
    assert {
        "stages/decompose.py",
        "support/recon.py",
        "models/recon_training.py",
        "store/checkpoints.py",
        "models/renderer.py",
    } <= closure  # decompose -> support.recon -> models.recon_training -> renderer
    assert "stages/regress.py" not in import_closure(REPO, "stages.factorize")


def test_a_planted_missing_dependency_is_caught_and_sync_restores_it(tmp_path):
    for folder in PACKAGES:
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    text = (REPO / "dvc.yaml").read_text()
    planted = text.replace("      - models/linear_semantics.py\n", "", 1)  # the first stage that lists it
    assert planted != text
    (tmp_path / "dvc.yaml").write_text(planted)
    missing = _mismatches(tmp_path)
    assert len(missing) == 1 and list(missing.values())[0] == (["models/linear_semantics.py"], [])
    changes = sync_deps(tmp_path)
    assert list(changes.values()) == [(["models/linear_semantics.py"], [])]
    assert _mismatches(tmp_path) == {}
    restored = (tmp_path / "dvc.yaml").read_text()
    assert "# the checkpoint gan.init starts from" in restored and restored.startswith("# The pipeline DAG")
    before, after = yaml.safe_load(text)["stages"], yaml.safe_load(restored)["stages"]
    for name in before:  # the same deps (at most in another order), everything else untouched
        assert set(map(str, after[name]["deps"])) == set(map(str, before[name]["deps"])), name
        assert {k: v for k, v in after[name].items() if k != "deps"} == {
            k: v for k, v in before[name].items() if k != "deps"
        }, name
