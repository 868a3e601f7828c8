"""``python -m pipeline split``: write a patient-level cross-validation datalist."""

from __future__ import annotations

import argparse
import os
from collections import Counter

from pipeline.cli import UserError
from pipeline.datalist import build_datalist, write_datalist

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "split",
        help="split patients into cross-validation folds (MONAI datalist JSON)",
        description="Assign each patient to one fold, stratified by acquisition site and tumour burden.",
    )
    parser.add_argument("--data", required=True, help="the kaggle_3m folder")
    parser.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for tie-breaking (default 0)")
    parser.add_argument("--out", required=True, help="datalist JSON file to write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.folds < 2:
        raise UserError(f"Invalid --folds {args.folds}: use 2 or more.")
    if args.out.endswith(("/", os.sep)) or os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is a folder; give the datalist file to write, for example {args.out.rstrip('/')}/datalist.json.")
    datalist = build_datalist(args.data, num_folds=args.folds, seed=args.seed)
    path = write_datalist(datalist, args.out)
    sizes = Counter(entry["fold"] for entry in datalist["training"])
    print(f"Wrote {path}: {len(datalist['training'])} patients in {args.folds} folds "
          f"({', '.join(f'fold {k}: {sizes[k]}' for k in range(args.folds))})")
    return 0
