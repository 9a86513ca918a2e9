"""`facesem`: run the pipeline, one stage, look into artifacts.

    facesem run [--target STAGE ...] [--force]   the Prefect flow over dvc.yaml's DAG
    facesem stage NAME [--force]                 one stage through DVC (dvc repro --single-item)
    facesem inspect [ARTIFACT]                   artifacts: shape, dtype, chunks, size, provenance
    facesem dag                                  the stages and their upstream, from dvc.yaml
    facesem params                               validate params.yaml and print it resolved
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pipeline  # noqa: F401  (sets DVC/Prefect environment defaults first)
from pipeline.env import project_root


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.flow import run_pipeline

    states = run_pipeline(targets=args.target or None, force=args.force)
    width = max(map(len, states), default=0)
    for name, state in states.items():
        print(f"{name:<{width}}  {state}")
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from pipeline.flow import dvc_command, stage_environment

    cmd = dvc_command("repro", "--single-item", args.name, *(["--force"] if args.force else []))
    return subprocess.call(cmd, cwd=project_root(), env=stage_environment())


def cmd_inspect(args: argparse.Namespace) -> int:
    import pandas as pd

    from pipeline.artifacts import summarize

    root = project_root()
    paths = [Path(args.artifact)] if args.artifact else sorted((root / "data").glob("*.zarr"))
    if not paths:
        print("no artifacts under data/ yet: run `facesem run`")
        return 0
    rows = []
    for path in paths:
        path = path if path.is_absolute() or path.exists() else root / path
        if not path.exists():
            print(f"error: artifact {path} does not exist", file=sys.stderr)
            return 2
        rows.extend(summarize(path))
    table = pd.DataFrame(rows)
    table["stored_mb"] = (table.pop("stored_bytes") / 2**20).round(2)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False))
    return 0


def cmd_dag(args: argparse.Namespace) -> int:
    from pipeline.dag import load_dag

    for name, upstream in load_dag(project_root()).items():
        print(f"{name} <- {', '.join(upstream) or '(source)'}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from pipeline.params import load_params

    params = load_params(project_root() / args.file)
    print(json.dumps(params.model_dump(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facesem", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the pipeline as a Prefect flow (DVC decides what is up to date)")
    p.add_argument("--target", action="append", help="only this stage and its upstream (repeatable)")
    p.add_argument("--force", action="store_true", help="re-run stages even if up to date")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("stage", help="run one stage through DVC")
    p.add_argument("name")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_stage)
    p = sub.add_parser("inspect", help="list artifacts (shape, dtype, chunks, size, provenance)")
    p.add_argument("artifact", nargs="?", help="path of one .zarr store (default: all under data/)")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("dag", help="print the stages and their upstream stages (from dvc.yaml)")
    p.set_defaults(func=cmd_dag)
    p = sub.add_parser("params", help="validate params.yaml and print the resolved values")
    p.add_argument("--file", default="params.yaml")
    p.set_defaults(func=cmd_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
