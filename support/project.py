"""The checkout: its root folder and the stage names its dvc.yaml declares.

Read as plain YAML: stages and tools that need only the names never open DVC's repository
(the DAG itself is read through DVC, in `pipeline/dag.py`).
"""

from __future__ import annotations

from pathlib import Path

import yaml


def project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) that holds dvc.yaml.

    Falls back to the checkout this package lives in.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return Path(__file__).resolve().parent.parent


def stage_names(root: Path | None = None) -> list[str]:
    """Stage names of dvc.yaml under `root` (default: `project_root()`), in file order
    (foreach/matrix stages by their base name).

    Raises ValueError when dvc.yaml is missing.
    """
    path = (root or project_root()) / "dvc.yaml"
    if not path.is_file():
        raise ValueError(f"{path} not found: cannot read stage names")
    return list((yaml.safe_load(path.read_text()) or {}).get("stages") or {})
