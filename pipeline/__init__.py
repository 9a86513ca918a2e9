"""facesem plumbing: params, artifacts, device, the DAG (from dvc.yaml), the Prefect flow, the CLI.

Importing this package makes every tool the pipeline runs (DVC, Prefect) keep its state
inside the project and send no telemetry (see `pipeline.env`).
"""

from pipeline.env import configure_environment

configure_environment()
