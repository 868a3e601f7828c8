"""Command-line interface: ``python -m pipeline COMMAND`` or ``lgg-pipeline COMMAND``.

Each command lives in its own module, which exposes ``register(subparsers)``. That
function adds an ``argparse`` sub-parser and sets its ``func`` default to a callable
that takes the parsed namespace and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from transforms.errors import DatasetError

__all__ = ["main", "UserError"]

# Modules that define one command each, in the order ``--help`` lists them.
COMMAND_MODULES = (
    "pipeline.demo",
    "pipeline.synth",
    "pipeline.summary",
    "pipeline.convert",
    "pipeline.split",
    "pipeline.train",
    "pipeline.evaluate",
    "pipeline.predict",
    "pipeline.export",
    "pipeline.report",
)


class UserError(Exception):
    """An error caused by input or options that the user can fix; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="LGG brain MRI segmentation with MONAI: data tools, training, evaluation, prediction.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except (UserError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
