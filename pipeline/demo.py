"""``python -m pipeline demo``: the whole workflow on built-in synthetic data, in a few minutes on a CPU.

The demo generates a training set and a separate test set of synthetic patients
(:mod:`pipeline.synth`), trains through the bundle's ``configs/train.json``, evaluates
and predicts on the test patients, which training never saw, and writes the report.
Its output folder receives:

- ``data/train/kaggle_3m`` and ``data/test/kaggle_3m``: the synthetic datasets.
- ``run/``: the training run (``checkpoints/model.pt``, TensorBoard logs, run record).
- ``evaluation/``, ``predictions/``, ``report/``: the outputs of ``evaluate``, ``predict``
  and ``report``.
- ``demo.json``: the demo's settings, which marks the folder as a demo output.

The defaults keep the images small (128 x 128 pixels) and training short, so the
numbers show that the workflow runs, not how well the model does on real MRI.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.bundle_runner import default_bundle_dir, run_config
from pipeline.cli import UserError
from pipeline.evaluate import evaluate
from pipeline.io_utils import atomic_write_text
from pipeline.patient_metrics_handler import format_summary
from pipeline.predict import predict
from pipeline.report import write_report
from pipeline.synth import generate_dataset

__all__ = ["DEMO_FOLDERS", "MARKER_FILE", "DemoSettings", "prepare_folder", "register", "run", "run_demo"]

logger = logging.getLogger(__name__)

MARKER_FILE = "demo.json"
# Folders that a demo writes. --overwrite deletes these and nothing else.
DEMO_FOLDERS = ("data", "run", "evaluation", "predictions", "report")


@dataclass
class DemoSettings:
    """Sizes of the demo: datasets, image size and training length.

    Attributes:
        train_patients: synthetic patients for training and validation (fold 0 of 5 validates).
        test_patients: further synthetic patients, from another seed, for evaluation and prediction.
        size: image width and height in pixels, a multiple of 16.
        min_slices, max_slices: range of the slice count per patient.
        epochs: training epochs.
        val_interval: validate every this many epochs.
        learning_rate: AdamW learning rate.
    """

    train_patients: int = 8
    test_patients: int = 4
    size: int = 128
    min_slices: int = 16
    max_slices: int = 24
    epochs: int = 12
    val_interval: int = 3
    learning_rate: float = 0.003


def prepare_folder(out: Path, overwrite: bool) -> None:
    """Create the demo folder, or clear the folders of an earlier demo in it when ``overwrite`` is set.

    Raises:
        UserError: the folder contains files and is not an earlier demo's folder, or
            ``overwrite`` is not set.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder. Choose another --out.")
    entries = sorted(out.iterdir()) if out.is_dir() else []
    if not entries:
        out.mkdir(parents=True, exist_ok=True)
        return
    if not (out / MARKER_FILE).is_file():
        raise UserError(f"{out} is not empty and is not an earlier demo's folder (no {MARKER_FILE}). Choose a new or empty --out.")
    if not overwrite:
        raise UserError(f"{out} contains an earlier demo. Pass --overwrite to replace it, or choose another --out.")
    for name in DEMO_FOLDERS:
        shutil.rmtree(out / name, ignore_errors=True)
    (out / MARKER_FILE).unlink()
    logger.info("Deleted the earlier demo in %s", out)


def _train(train_data: Path, run_dir: Path, settings: DemoSettings, device: str | None) -> Path:
    size = settings.size
    overrides = {
        "dataset_dir": str(train_data.resolve()),
        "output_dir": str(run_dir.resolve()),
        "epochs": settings.epochs,
        "val_interval": settings.val_interval,
        "learning_rate": settings.learning_rate,
        "patch_size": [size, size, 1],
        "roi_size": [size, size],
        "num_workers": 0,
    }
    if device is not None:
        overrides["device_name"] = device
    run_dir.mkdir(parents=True, exist_ok=True)
    run_config(default_bundle_dir(), ["train.json"], overrides, workflow_type="train",
               save_config_to=run_dir / "config.json")
    return run_dir / "checkpoints" / "model.pt"


def run_demo(out: str | os.PathLike, settings: DemoSettings | None = None, device: str | None = None,
             overwrite: bool = False) -> dict[str, Path]:
    """Run the demo into ``out`` and return the paths of its main outputs.

    Returns:
        ``{"report", "run", "checkpoint", "evaluation", "predictions"}`` paths.

    Raises:
        UserError: the output folder is not usable (see ``--overwrite``).
    """
    settings = settings or DemoSettings()
    folder = Path(out)
    prepare_folder(folder, overwrite)
    atomic_write_text(folder / MARKER_FILE, json.dumps(asdict(settings), indent=2) + "\n")
    started = time.monotonic()

    slices = (settings.min_slices, settings.max_slices)
    train_data = generate_dataset(folder / "data" / "train", settings.train_patients, 0, slices, settings.size)
    test_data = generate_dataset(folder / "data" / "test", settings.test_patients, 1, slices, settings.size)

    run_dir = folder / "run"
    checkpoint = _train(train_data, run_dir, settings, device)
    logger.info("Demo: training finished after %.0f s", time.monotonic() - started)

    model = {"ckpt_path": str(checkpoint.resolve()), "roi_size": [settings.size, settings.size]}
    if device is not None:
        model["device_name"] = device
    summary = evaluate(test_data, folder / "evaluation", dict(model))
    logger.info("Demo: evaluation of the test patients:\n%s", format_summary(summary))
    predict(test_data, folder / "predictions", dict(model))
    index = write_report(run_dir, folder / "report", folder / "evaluation", folder / "predictions")
    logger.info("Demo: finished after %.0f s", time.monotonic() - started)

    return {
        "report": index,
        "run": run_dir,
        "checkpoint": checkpoint,
        "evaluation": folder / "evaluation",
        "predictions": folder / "predictions",
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` command to the ``python -m pipeline`` parser."""
    defaults = DemoSettings()
    parser = subparsers.add_parser(
        "demo",
        help="synthetic data, short training, evaluation, prediction and report, in a few minutes on a CPU",
        description=(
            "Generate synthetic training and test patients, train through the bundle's configs/train.json, "
            "evaluate and predict on the test patients and write the report."
        ),
    )
    parser.add_argument("--out", default="lgg_demo", help="output folder (default: ./lgg_demo)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help=f"training epochs (default {defaults.epochs})")
    parser.add_argument(
        "--size", type=int, default=defaults.size,
        help=f"image width and height in pixels, a multiple of 16 (default {defaults.size})",
    )
    parser.add_argument("--device", default=None, help="'auto' (CUDA when available), 'cpu' or 'cuda:N'")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo for the ``demo`` command and print where to look."""
    if args.epochs < 1:
        raise UserError(f"--epochs must be 1 or more, got {args.epochs}.")
    if args.size < 32 or args.size % 16:
        raise UserError(f"--size must be a multiple of 16 and at least 32, got {args.size}.")
    settings = DemoSettings(epochs=args.epochs, size=args.size, val_interval=min(DemoSettings.val_interval, args.epochs))
    outputs = run_demo(args.out, settings, device=args.device, overwrite=args.overwrite)

    print(f"Report: {outputs['report']}")
    print(f"TensorBoard: tensorboard --logdir {outputs['run'] / 'tensorboard'}")
    print(f"Model: {outputs['checkpoint']} (bundle configs: {default_bundle_dir() / 'configs'})")
    print(f"Evaluation: {outputs['evaluation']}  Predictions: {outputs['predictions']}")
    print(f"Report again: python -m pipeline report {outputs['run']} --eval {outputs['evaluation']} "
          f"--predictions {outputs['predictions']} --out {Path(outputs['report']).parent}")
    return 0
