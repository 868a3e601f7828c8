"""``python -m pipeline evaluate``: run the bundle's evaluation config and report per-patient metrics.

The command runs ``configs/train.json`` merged with ``configs/evaluate.json`` through
:func:`pipeline.bundle_runner.run_config`. The config does the inference, the
post-processing and the metrics, and this module only maps options to config keys and
prints the summary. The output folder receives:

- ``patient_metrics.csv``: Dice and IoU over the whole volume, HD95, slice-level
  sensitivity and specificity, predicted and true tumour volume, one row per patient.
  Distance and volume columns carry their unit (``hd95_px`` or ``hd95_mm``).
- ``summary.json``: mean, median, std, min and max of each metric over patients.
  It never contains NaN; :mod:`pipeline.metrics` states the rules for empty masks.
- MONAI ``MetricsSaver`` files (``metrics.csv``, ``val_*_raw.csv``, ``val_*_summary.csv``),
  whose ``val_hd95_px`` stays in pixels even with ``--spacing``.
- ``config.json``: the merged config with the overrides applied.

The helpers :func:`add_model_arguments` and :func:`model_overrides` define the
options that ``predict`` shares: checkpoints, spacing, post-processing and mode.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.bundle_runner import default_bundle_dir, parse_set_options, run_config
from pipeline.cli import UserError
from pipeline.io_utils import check_output_outside
from pipeline.patient_metrics_handler import format_summary
from pipeline.train import MODES

__all__ = [
    "METRICS_FILE",
    "SUMMARY_FILE",
    "add_model_arguments",
    "evaluate",
    "model_overrides",
    "register",
    "run",
]

logger = logging.getLogger(__name__)

METRICS_FILE = "patient_metrics.csv"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"


def add_model_arguments(parser: argparse.ArgumentParser, modes: Sequence[str] = tuple(MODES)) -> None:
    """Add the options that select the model, the voxel spacing and the post-processing of predictions."""
    parser.add_argument(
        "--checkpoint", action="append", metavar="FILE",
        help="model weights (model.pt). Give it several times to average an ensemble "
             "(default: the bundle's models/model.pt)",
    )
    parser.add_argument(
        "--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
        help="voxel spacing in mm along the TIFF row, the TIFF column and the slice axis, "
             "which gives distances in mm and volumes in mm3 (default: pixels and voxels)",
    )
    parser.add_argument(
        "--largest-component", action=argparse.BooleanOptionalAction, default=None,
        help="keep only the largest 3D connected tumour component of each patient "
             "(default: on, as in the bundle config; --no-largest-component keeps every component)",
    )
    parser.add_argument(
        "--min-component-voxels", type=int, default=0, metavar="N",
        help="remove 3D connected tumour components smaller than N voxels (default 0: keep all)",
    )
    parser.add_argument(
        "--flip-tta", action="store_true",
        help="average the prediction of each slice with that of its left-right mirror image",
    )
    parser.add_argument(
        "--mode", choices=list(modes), default="2d",
        help="input mode the model was trained with, where 2.5d adds the neighbour slices as channels (default 2d)",
    )
    parser.add_argument("--device", default=None, help="'auto' (CUDA when available), 'cpu' or 'cuda:N'")
    parser.add_argument(
        "--bundle", default=str(default_bundle_dir()), help="bundle folder (default: the one in this repository)"
    )
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE",
        help="any other config override, for example --set roi_size=[128,128]",
    )


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Return the config overrides for the options of :func:`add_model_arguments`.

    Raises:
        UserError: a spacing value is not positive, a component size is negative, or a
            checkpoint file does not exist.
    """
    if args.spacing is not None and any(not value > 0 for value in args.spacing):
        raise UserError(f"--spacing needs three positive values in mm, got {' '.join(map(str, args.spacing))}.")
    if args.min_component_voxels < 0:
        raise UserError(f"--min-component-voxels must be 0 or more, got {args.min_component_voxels}.")

    overrides: dict[str, Any] = dict(MODES[args.mode][1])
    checkpoints = [Path(path).resolve() for path in args.checkpoint or []]
    for path in checkpoints:
        if not path.is_file():
            raise UserError(f"Checkpoint not found: {path}. Give the model.pt file of a training run.")
    if checkpoints:
        overrides["ckpt_path"] = str(checkpoints[0])
        overrides["ensemble_checkpoints"] = [str(path) for path in checkpoints[1:]]
    if args.spacing is not None:
        overrides["spacing"] = [float(value) for value in args.spacing]
    if args.largest_component is not None:
        overrides["largest_component"] = bool(args.largest_component)
    overrides["min_component_voxels"] = int(args.min_component_voxels)
    overrides["flip_tta"] = bool(args.flip_tta)
    if args.device is not None:
        overrides["device_name"] = args.device
    overrides.update(parse_set_options(args.set))
    return overrides


def evaluate(
    data: str | os.PathLike,
    out: str | os.PathLike,
    overrides: dict[str, Any] | None = None,
    mode: str = "2d",
    datalist: str | os.PathLike | None = None,
    fold: int | None = None,
    bundle: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Evaluate a model on every patient under ``data``, or on one fold of a datalist, and return the summary.

    Args:
        data: the ``kaggle_3m`` folder (patients need masks).
        out: output folder for the reports, created if missing. It must not lie inside ``data``.
        overrides: config keys and values, for example from :func:`model_overrides`.
        mode: ``"2d"``, ``"2.5d"`` or ``"3d"``; 3D adds ``configs/train_3d.json``.
        datalist: a datalist JSON file; with it only the validation patients of ``fold`` are evaluated.
        fold: the datalist fold (default 0).
        bundle: bundle folder (default: the one in this repository).

    Returns:
        The content of ``summary.json`` (see :func:`pipeline.metrics.summarise`).

    Raises:
        UserError: an option or the bundle is invalid.
        DatasetError: the data, datalist or checkpoint is invalid, or ``out`` lies inside ``data``.
    """
    if not Path(data).exists():
        raise UserError(f"Dataset folder not found: {data}. Give the kaggle_3m folder.")
    if mode not in MODES:
        raise UserError(f"Unknown mode {mode!r}. Use one of {', '.join(MODES)}.")
    check_output_outside(out, data)

    extra_files, mode_overrides = MODES[mode]
    values: dict[str, Any] = dict(mode_overrides)
    values.update(overrides or {})
    values.update({
        "dataset_dir": str(Path(data).resolve()),
        "output_dir": str(Path(out).resolve()),
        "datalist_file": str(Path(datalist).resolve()) if datalist else "",
    })
    if fold is not None:
        values["fold"] = fold

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    # A stale summary from an earlier run must not pass for this run's result.
    (folder / SUMMARY_FILE).unlink(missing_ok=True)
    run_config(
        bundle or default_bundle_dir(),
        ["train.json", *extra_files, "evaluate.json"],
        values,
        save_config_to=folder / CONFIG_FILE,
    )

    summary_path = folder / SUMMARY_FILE
    if not summary_path.is_file():
        raise UserError(f"The evaluation wrote no {SUMMARY_FILE} to {folder} because no patient was evaluated.")
    return json.loads(summary_path.read_text())


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` command to the ``python -m pipeline`` parser."""
    parser = subparsers.add_parser(
        "evaluate",
        help="per-patient Dice, IoU, HD95, slice detection and volumes (runs configs/evaluate.json)",
        description=(
            "Evaluate a trained model through the bundle's configs/train.json and configs/evaluate.json. "
            f"Writes {METRICS_FILE} (one row per patient) and {SUMMARY_FILE} (mean, median, std) to --out "
            "and prints the summary table."
        ),
    )
    parser.add_argument("--data", required=True, help="the kaggle_3m folder, whose patients all need masks")
    parser.add_argument("--out", required=True, help="output folder for the reports, outside the dataset")
    parser.add_argument(
        "--datalist", default="", help="datalist JSON from 'python -m pipeline split': evaluate one fold only"
    )
    parser.add_argument("--fold", type=int, default=None, help="the datalist fold to evaluate (default 0)")
    add_model_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate for the ``evaluate`` command and print the summary table and the report paths."""
    if args.fold is not None and not args.datalist:
        raise UserError("--fold needs --datalist, the file that defines the folds.")
    summary = evaluate(
        args.data, args.out, model_overrides(args), mode=args.mode,
        datalist=args.datalist or None, fold=args.fold, bundle=args.bundle,
    )
    out = Path(args.out)
    print(f"Evaluated {summary['n_patients']} patients:")
    print(format_summary(summary))
    print(f"Per-patient metrics: {out / METRICS_FILE}")
    print(f"Summary: {out / SUMMARY_FILE}")
    return 0
