"""Orchestration: the DAG (from dvc.yaml), the Prefect flow and its sharded stages, the
processes it starts, the CLI, and the environment DVC and Prefect run in.

May import every other package except stages/ (stages run as `dvc repro` commands).
Importing this package makes every tool the pipeline runs (DVC, Prefect) keep its state
inside the project and send no telemetry (see `pipeline.env`).
"""

from pipeline.env import configure_environment

configure_environment()
