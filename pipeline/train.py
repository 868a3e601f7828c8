"""``python -m pipeline train``: run the bundle's training config with command-line overrides."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.bundle_runner import default_bundle_dir, parse_set_options, run_config
from pipeline.cli import UserError

__all__ = ["register", "run"]

logger = logging.getLogger(__name__)

# Training modes: extra config files merged after train.json, and overrides they imply.
MODES = {
    "2d": ([], {}),
    "2.5d": ([], {"context_radius": 1}),
    "3d": (["train_3d.json"], {}),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the segmentation network (runs the bundle's configs/train.json)",
        description="Train through the bundle's configs/train.json; every option is a config override.",
    )
    parser.add_argument("--data", required=True, help="the kaggle_3m folder")
    parser.add_argument("--out", required=True, help="run folder: checkpoints, TensorBoard logs, run record")
    parser.add_argument("--datalist", default="", help="datalist JSON from 'python -m pipeline split' (default: split on the fly)")
    parser.add_argument("--fold", type=int, default=None, help="validation fold (default 0)")
    parser.add_argument("--epochs", type=int, default=None, help="number of epochs")
    parser.add_argument("--mode", choices=sorted(MODES), default="2d", help="2D slices, 2.5D (neighbour slices as channels) or 3D patches")
    parser.add_argument("--device", default=None, help="'auto' (CUDA when available), 'cpu' or 'cuda:N'")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    parser.add_argument("--bundle", default=str(default_bundle_dir()), help="bundle folder (default: the one in this repository)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other config override, for example --set learning_rate=0.0005")
    parser.set_defaults(func=run)


def build_overrides(args: argparse.Namespace) -> tuple[list[str], dict]:
    """Return the config file names and overrides for the parsed arguments."""
    extra_files, mode_overrides = MODES[args.mode]
    overrides = dict(mode_overrides)
    overrides.update({
        "dataset_dir": str(Path(args.data).resolve()),
        "output_dir": str(Path(args.out).resolve()),
        "datalist_file": str(Path(args.datalist).resolve()) if args.datalist else "",
        "resume": bool(args.resume),
    })
    if args.fold is not None:
        overrides["fold"] = args.fold
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.device is not None:
        overrides["device_name"] = args.device
    overrides.update(parse_set_options(args.set))
    return ["train.json", *extra_files], overrides


def run(args: argparse.Namespace) -> int:
    if not Path(args.data).exists():
        raise UserError(f"Dataset folder not found: {args.data}. Give the kaggle_3m folder.")
    configs, overrides = build_overrides(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_config(args.bundle, configs, overrides, workflow_type="train", save_config_to=out / "config.json")
    print(f"Training finished. Best model: {out / 'checkpoints' / 'model.pt'}")
    print(f"TensorBoard: tensorboard --logdir {out / 'tensorboard'}")
    return 0
