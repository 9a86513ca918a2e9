"""What every stage's `main` does: parse its output paths, load + validate params.yaml."""

from __future__ import annotations

import argparse
import logging

from support.params import Params, load_params


def stage_args(description: str, outputs: list[str]) -> tuple[argparse.Namespace, Params]:
    """Parse `--params` and the stage's required output paths (named in dvc.yaml's cmd)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    for name in outputs:
        parser.add_argument(f"--{name}", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    return args, load_params(args.params)
