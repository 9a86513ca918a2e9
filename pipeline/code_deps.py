"""dvc.yaml's code dependencies, computed: the project-internal import closure of each stage.

A stage's `cmd` runs `python -m stages.NAME`; every project module it imports, directly or
through others (models/, store/, support/, ...), changes its results, so each must be a dep or DVC
calls the stage up to date when it is not. `stage_closure` reads the imports statically (ast:
module-level and function-level `import` / `from ... import`, relative ones resolved) and
follows them; `sync_deps` rewrites dvc.yaml's Python deps to exactly that closure, keeping the
other deps (data, shipped checkpoints, `${data.path}`) and the file's comments.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGES = ("models", "store", "support", "stages", "pipeline", "tools")
_CMD = re.compile(r"python -m (stages\.\w+)")


def _module_file(root: Path, module: str) -> Path | None:
    """stages.faces -> stages/faces.py (or a package's __init__.py); None outside the project."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(root: Path, path: Path) -> set[str]:
    """Project modules a file imports (absolute names), wherever in the file the import is."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {m for m in found if _module_file(root, m) is not None}


def import_closure(root: str | Path, module: str) -> set[str]:
    """Repository-relative paths of ``module``'s file and every project file it reaches by imports."""
    root = Path(root)
    todo, seen = [module], set()
    files: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(root, name)
        if path is None:
            continue
        if path.name != "__init__.py" or path.stat().st_size:
            files.add(path.relative_to(root).as_posix())
        todo.extend(_imports(root, path))
        parent = name.rsplit(".", 1)[0] if "." in name else None
        if parent:
            todo.append(parent)  # importing pkg.mod runs pkg/__init__.py
    return files


def import_graph(root: str | Path, folders: tuple[str, ...] = (*PACKAGES, "benchmarks")) -> dict[str, set[str]]:
    """{module: the project modules it imports} for every .py file under `folders` of `root`
    (modules by dotted name: `stages.faces`, `store.artifacts`, `benchmarks.gan`)."""
    root = Path(root)
    graph = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            graph[name.removesuffix(".__init__")] = _imports(root, path)
    return graph


def stage_closures(root: str | Path, dvc_yaml: dict) -> dict[str, set[str]]:
    """{stage: its import closure} for every dvc.yaml stage whose cmd runs `python -m stages.X`."""
    out = {}
    for name, stage in (dvc_yaml.get("stages") or {}).items():
        match = _CMD.search(str(stage.get("cmd", "")))
        if match:
            out[name] = import_closure(root, match.group(1))
    return out


def sync_deps(root: str | Path) -> dict[str, tuple[list[str], list[str]]]:
    """Rewrite dvc.yaml's Python deps of each stage to its import closure (comments kept).

    Returns {stage: (added, removed)} for the stages that changed.
    """
    from ruamel.yaml import YAML  # noqa: PLC0415  (DVC's own YAML library: keeps comments and order)

    root = Path(root)
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)  # the file's own style
    path = root / "dvc.yaml"
    doc = yaml.load(path.read_text())
    changes = {}
    for name, closure in stage_closures(root, doc).items():
        deps = doc["stages"][name].setdefault("deps", [])
        listed = [d for d in deps if isinstance(d, str) and d.endswith(".py")]
        added, removed = sorted(closure - set(listed)), sorted(set(listed) - closure)
        if not added and not removed:
            continue
        for dep in removed:
            deps.remove(dep)
        last_py = max((i for i, d in enumerate(deps) if isinstance(d, str) and d.endswith(".py")), default=-1)
        for offset, dep in enumerate(added, 1):
            deps.insert(last_py + offset, dep)
        changes[name] = (added, removed)
    if changes:
        with path.open("w") as fh:
            yaml.dump(doc, fh)
    return changes
