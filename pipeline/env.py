"""Process environment for DVC and Prefect: project-local state, no telemetry, no global files.

Only defaults are set (`os.environ.setdefault`), so a user can still point Prefect at a
shared server (`PREFECT_API_URL`) or move `PREFECT_HOME` explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path

from support.project import project_root


def environment_defaults(root: Path) -> dict[str, str]:
    """The variables `configure_environment` sets when they are not set already."""
    state = root / ".dvc" / "tmp"
    return {
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(state / "site-cache"),
        "DVC_GLOBAL_CONFIG_DIR": str(state / "global-config"),
        "DVC_SYSTEM_CONFIG_DIR": str(state / "system-config"),
        "PREFECT_HOME": str(root / ".prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_LOGGING_COLORS": "false",
    }


def configure_environment(root: Path | None = None) -> Path:
    """Set the defaults above for this process and its children; returns the project root."""
    root = project_root(root)
    for key, value in environment_defaults(root).items():
        os.environ.setdefault(key, value)
    return root
