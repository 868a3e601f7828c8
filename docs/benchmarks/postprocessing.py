"""Measure what each post-processing and ensembling option of the bundle does to the evaluation metrics.

The script evaluates one model with ``python -m pipeline evaluate`` (``configs/evaluate.json``)
once without options and once per option. It prints a markdown table with mean and
median Dice, mean IoU, mean HD95, slice sensitivity and specificity. The table also
counts the patients whose Dice each option improves or worsens compared with no option. An option should become a default of the configs only when it helps here.

Options measured: ``largest_component``, ``min_component_voxels`` (each size of
``--min-voxels``), ``flip_tta``, ``flip_tta`` with ``largest_component``, and an
ensemble of the model with the ``--ensemble`` checkpoints when given.

The model is the bundle's ``models/model.pt`` unless ``--checkpoint`` names another.
Patients the model was trained on give optimistic numbers. Pass the datalist and fold
of its training run (``--datalist``, ``--fold``) to measure on held-out patients only.

Usage::

    python docs/benchmarks/postprocessing.py --data /path/to/kaggle_3m
    python docs/benchmarks/postprocessing.py --data /path/to/kaggle_3m --datalist datalist.json --fold 0
"""

from __future__ import annotations

import argparse
import csv
import datetime
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.bundle_runner import default_bundle_dir, parse_set_options
from pipeline.evaluate import METRICS_FILE, evaluate

logger = logging.getLogger("postprocessing_benchmark")

BASELINE = "none"


def build_variants(min_voxels: list[int], ensemble: list[str]) -> dict[str, dict[str, Any]]:
    """Return the option sets to evaluate, by table label. The first one is the baseline."""
    # Every variant sets largest_component itself, because the configs turn it on by default.
    variants: dict[str, dict[str, Any]] = {BASELINE: {"largest_component": False}}
    variants["largest component"] = {"largest_component": True}
    for size in min_voxels:
        variants[f"components >= {size} voxels"] = {"min_component_voxels": size, "largest_component": False}
    variants["flip TTA"] = {"flip_tta": True, "largest_component": False}
    variants["flip TTA + largest component"] = {"flip_tta": True, "largest_component": True}
    if ensemble:
        variants[f"ensemble of {len(ensemble) + 1} checkpoints"] = {
            "ensemble_checkpoints": ensemble, "largest_component": False}
    return variants


def read_dice(folder: Path) -> dict[str, float]:
    """Return each patient's Dice from an evaluation's ``patient_metrics.csv``."""
    with (folder / METRICS_FILE).open(newline="") as file:
        return {row["patient"]: float(row["dice"]) for row in csv.DictReader(file)}


def statistic(summary: dict[str, Any], prefix: str, name: str) -> str:
    """Format one statistic of the first summary metric whose name starts with ``prefix``."""
    for metric, values in summary["metrics"].items():
        if metric.startswith(prefix):
            value = values.get(name)
            return "n/a" if value is None else f"{value:.3f}"
    return "n/a"


def hd95_unit(summary: dict[str, Any]) -> str:
    return next((name.split("_", 1)[1] for name in summary["metrics"] if name.startswith("hd95_")), "px")


def format_table(results: dict[str, tuple[dict[str, Any], dict[str, float], float]]) -> str:
    """Format one markdown row per variant. ``results`` maps a label to (summary, Dice per patient, seconds)."""
    baseline_summary, baseline_dice, _ = results[BASELINE]
    unit = hd95_unit(baseline_summary)
    lines = [
        f"| option | Dice mean | Dice median | IoU mean | HD95 mean ({unit}) | slice sensitivity | "
        "slice specificity | patients better / worse | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, (summary, dice, seconds) in results.items():
        if label == BASELINE:
            changed = "-"
        else:
            better = sum(1 for patient, value in dice.items() if value > baseline_dice.get(patient, value) + 1e-9)
            worse = sum(1 for patient, value in dice.items() if value < baseline_dice.get(patient, value) - 1e-9)
            changed = f"{better} / {worse}"
        cells = [
            label,
            statistic(summary, "dice", "mean"),
            statistic(summary, "dice", "median"),
            statistic(summary, "iou", "mean"),
            statistic(summary, "hd95", "mean"),
            statistic(summary, "slice_sensitivity", "mean"),
            statistic(summary, "slice_specificity", "mean"),
            changed,
            f"{seconds:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_line() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{platform.processor() or platform.machine()}, {cores} cores, {platform.platform()}, {date}"


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--data", required=True, help="kaggle_3m folder, whose patients all need masks")
    arguments.add_argument(
        "--checkpoint", default=str(default_bundle_dir() / "models" / "model.pt"),
        help="model weights (default: the bundle's models/model.pt)",
    )
    arguments.add_argument("--datalist", default=None, help="datalist JSON: evaluate only the validation patients")
    arguments.add_argument("--fold", type=int, default=None, help="the datalist fold (default 0)")
    arguments.add_argument(
        "--min-voxels", type=int, nargs="*", default=[50, 200], metavar="N",
        help="component sizes to try for min_component_voxels (default: 50 200)",
    )
    arguments.add_argument("--ensemble", nargs="*", default=[], metavar="FILE", help="further checkpoints to average")
    arguments.add_argument("--mode", choices=("2d", "2.5d", "3d"), default="2d", help="the model's input mode")
    arguments.add_argument("--set", action="append", metavar="KEY=VALUE", help="further config overrides")
    arguments.add_argument("--out", default=None, help="keep the evaluation folders here (default: a temporary folder)")
    options = arguments.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)

    base = {"ckpt_path": str(Path(options.checkpoint).resolve()), **parse_set_options(options.set)}
    variants = build_variants(options.min_voxels, [str(Path(path).resolve()) for path in options.ensemble])
    results: dict[str, tuple[dict[str, Any], dict[str, float], float]] = {}
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(options.out) if options.out else Path(temporary)
        for index, (label, overrides) in enumerate(variants.items()):
            started = time.monotonic()
            folder = root / f"variant_{index}"
            summary = evaluate(
                options.data, folder, {**base, **overrides}, mode=options.mode,
                datalist=options.datalist, fold=options.fold,
            )
            seconds = time.monotonic() - started
            results[label] = (summary, read_dice(folder), seconds)
            logger.info("%s: mean Dice %s (%.0f s)", label, statistic(summary, "dice", "mean"), seconds)

    patients = results[BASELINE][0]["n_patients"]
    print(f"Model: {options.checkpoint}")
    print(f"Patients: {patients} from {options.data}" + (f", fold {options.fold or 0} of {options.datalist}"
                                                         if options.datalist else ""))
    print(f"Machine: {machine_line()}")
    print()
    print(format_table(results))


if __name__ == "__main__":
    main()
