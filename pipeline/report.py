"""``python -m pipeline report``: figures and an HTML page for a training run and its evaluation.

The report folder (default ``RUN_DIR/report``) receives:

- ``learning_curves.png``: training loss per iteration with its mean per epoch,
  validation Dice and IoU per epoch, and the learning rate per epoch, read from the
  TensorBoard event files in ``RUN_DIR/tensorboard``.
- ``patient_dice.png``: Dice per patient as bars with the mean and median as lines,
  from the ``patient_metrics.csv`` of ``python -m pipeline evaluate`` (``--eval``).
- ``samples.png``: overlays written by ``python -m pipeline predict`` (``--predictions``),
  the slice with the largest predicted tumour of patients spread over the Dice range.
- ``index.html``: the figures, the summary table and the per-patient table.

Each figure has a fixed size in pixels (``FIGURE_SIZES``) whatever the number of
patients, epochs or samples.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import tifffile
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pipeline.cli import UserError
from pipeline.evaluate import METRICS_FILE, SUMMARY_FILE
from pipeline.io_utils import atomic_write_bytes, atomic_write_text
from pipeline.predict import OVERLAY_FOLDER, PREDICTIONS_FILE

__all__ = [
    "FIGURE_SIZES",
    "INDEX_FILE",
    "LEARNING_CURVES_FILE",
    "PATIENT_DICE_FILE",
    "SAMPLES_FILE",
    "read_scalars",
    "register",
    "run",
    "write_report",
]

logger = logging.getLogger(__name__)

LEARNING_CURVES_FILE = "learning_curves.png"
PATIENT_DICE_FILE = "patient_dice.png"
SAMPLES_FILE = "samples.png"
INDEX_FILE = "index.html"

# Figure file -> (width, height) in pixels at _DPI.
_DPI = 100
FIGURE_SIZES = {
    LEARNING_CURVES_FILE: (1500, 450),
    PATIENT_DICE_FILE: (1200, 550),
    SAMPLES_FILE: (1200, 700),
}
_SAMPLE_COLUMNS = 4
_MAX_SAMPLES = 8

_LOSS_TAG = "train_loss"
_DICE_TAG = "val_mean_dice"
_IOU_TAG = "val_mean_iou"
_LR_TAG = "learning_rate"

# Columns of patient_metrics.csv shown in the HTML table, by prefix, so units carry over.
_TABLE_PREFIXES = ("dice", "iou", "hd95", "slice_sensitivity", "slice_specificity", "pred_volume", "true_volume")


@dataclass
class _Sample:
    patient: str
    slice_number: int
    path: Path
    dice: float | None


@dataclass
class _Report:
    """Content of a report: curves, per-patient metrics, summary, samples and run parameters."""

    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    patient_rows: list[dict[str, str]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    samples: list[_Sample] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    epoch_length: int | None = None


# ---------------------------------------------------------------- inputs


def read_scalars(log_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Read every scalar of the TensorBoard event files in ``log_dir`` as ``{tag: [(step, value), ...]}``.

    Files are read in name order, which is the order they were created in. A resumed
    run can log a step twice, and the later value wins. Steps come out sorted.
    """
    merged: dict[str, dict[int, float]] = {}
    for event_file in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            values = merged.setdefault(tag, {})
            for event in accumulator.Scalars(tag):
                values[int(event.step)] = float(event.value)
    return {tag: sorted(values.items()) for tag, values in merged.items()}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def _as_float(value: Any) -> float:
    """Convert a CSV cell or a JSON number to float, with NaN for empty, missing and invalid values."""
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _predicted_pixels(predictions: Path, patient: str, number: int) -> int:
    path = predictions / patient / f"{patient}_{number}_mask.tif"
    return int(np.count_nonzero(tifffile.imread(path))) if path.is_file() else 0


def _select_samples(predictions: Path, dice: dict[str, float]) -> list[_Sample]:
    """Pick up to ``_MAX_SAMPLES`` patients spread over the Dice range and one overlay of each.

    The overlay is the slice with the most predicted tumour pixels, or the first overlay
    when the prediction is empty on every overlaid slice.
    """
    candidates: dict[str, list[tuple[int, Path]]] = {}
    for path in sorted(predictions.glob(f"*/{OVERLAY_FOLDER}/*_overlay.png")):
        patient = path.parent.parent.name
        number_text = path.name[len(patient) + 1: -len("_overlay.png")]
        if path.name.startswith(f"{patient}_") and number_text.isdigit():
            candidates.setdefault(patient, []).append((int(number_text), path))
    if not candidates:
        return []

    # Patients sorted by Dice (unknown Dice last), then evenly spaced picks over that order.
    patients = sorted(candidates, key=lambda p: (-dice.get(p, -1.0), p))
    if len(patients) > _MAX_SAMPLES:
        picks = np.linspace(0, len(patients) - 1, _MAX_SAMPLES).round().astype(int)
        patients = [patients[index] for index in sorted(set(picks.tolist()))]

    samples = []
    for patient in patients:
        overlays = candidates[patient]
        number, path = max(overlays, key=lambda item: (_predicted_pixels(predictions, patient, item[0]), -item[0]))
        samples.append(_Sample(patient, number, path, dice.get(patient)))
    return samples


def _epoch_length(run_dir: Path, parameters: dict[str, Any]) -> int | None:
    """Return the training iterations per epoch from the run record, or None when the record lacks them.

    The training loader batches ``batch_patients`` patients and keeps the last,
    smaller batch, so an epoch has ceil(training patients / batch_patients) iterations.
    """
    batch = parameters.get("batch_patients")
    datalist = run_dir / "datalist.json"
    if not isinstance(batch, int) or batch < 1 or not datalist.is_file():
        return None
    content = json.loads(datalist.read_text())
    training = [entry for entry in content.get("training", []) if entry.get("fold") != content.get("fold")]
    return math.ceil(len(training) / batch) if training else None


def _load_report(run_dir: Path, eval_dir: Path | None, predictions: Path | None) -> _Report:
    report = _Report()
    log_dir = run_dir / "tensorboard"
    if log_dir.is_dir():
        report.scalars = read_scalars(log_dir)
    else:
        logger.warning("No TensorBoard folder %s, so the learning curves are empty.", log_dir)

    info = run_dir / "run_info.json"
    if info.is_file():
        report.parameters = json.loads(info.read_text()).get("parameters", {})
    report.epoch_length = _epoch_length(run_dir, report.parameters)

    if eval_dir is not None:
        metrics, summary = eval_dir / METRICS_FILE, eval_dir / SUMMARY_FILE
        for path in (metrics, summary):
            if not path.is_file():
                raise UserError(f"{path} not found. Give --eval the output folder of 'python -m pipeline evaluate'.")
        report.patient_rows = _read_csv(metrics)
        report.summary = json.loads(summary.read_text())

    if predictions is not None:
        if not (predictions / PREDICTIONS_FILE).is_file():
            raise UserError(
                f"{predictions / PREDICTIONS_FILE} not found. "
                "Give --predictions the output folder of 'python -m pipeline predict'."
            )
        dice = {row["patient"]: _as_float(row.get("dice")) for row in report.patient_rows}
        report.samples = _select_samples(predictions, dice)
    return report


# ---------------------------------------------------------------- figures


def _new_figure(name: str) -> Figure:
    width, height = FIGURE_SIZES[name]
    return Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, layout="constrained")


def _png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def _steps_values(points: Sequence[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    if not points:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*points)
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def _draw_learning_curves(scalars: dict[str, list[tuple[int, float]]], epoch_length: int | None) -> Figure:
    """Draw the loss, the validation Dice and IoU, and the learning rate against the epoch.

    The loss is logged per iteration. Without ``epoch_length`` the iterations per epoch
    come from the learning rate, which is logged once per epoch, when that division is exact.
    """
    figure = _new_figure(LEARNING_CURVES_FILE)
    loss_axes, metric_axes, lr_axes = figure.subplots(1, 3)
    figure.suptitle("Learning curves")

    iterations, losses = _steps_values(scalars.get(_LOSS_TAG, []))
    lr_epochs, rates = _steps_values(scalars.get(_LR_TAG, []))
    epochs = int(lr_epochs.max()) if lr_epochs.size else 0
    if epoch_length is None and losses.size and epochs and iterations.max() % epochs == 0:
        epoch_length = int(iterations.max()) // epochs
    if losses.size and epoch_length:
        epoch_of_iteration = iterations / epoch_length
        loss_axes.plot(epoch_of_iteration, losses, color="0.7", linewidth=0.8, label="per iteration")
        epoch_index = np.ceil(epoch_of_iteration).astype(int)
        means = [(e, losses[epoch_index == e].mean()) for e in np.unique(epoch_index)]
        loss_axes.plot(*zip(*means), color="C0", marker="o", markersize=3, label="epoch mean")
        loss_axes.set_xlabel("epoch")
        loss_axes.legend()
    elif losses.size:
        loss_axes.plot(iterations, losses, color="C0", linewidth=0.8)
        loss_axes.set_xlabel("iteration")
    else:
        _write_empty(loss_axes, f"no '{_LOSS_TAG}' in the logs")
    loss_axes.set_title("training loss (Dice + cross-entropy)")
    loss_axes.set_ylabel("loss")

    plotted = False
    for tag, label, colour in ((_DICE_TAG, "Dice", "C1"), (_IOU_TAG, "IoU", "C2")):
        steps, values = _steps_values(scalars.get(tag, []))
        if steps.size:
            metric_axes.plot(steps, values, color=colour, marker="o", markersize=3, label=label)
            plotted = True
    if plotted:
        metric_axes.set_ylim(0.0, 1.0)
        metric_axes.legend()
    else:
        _write_empty(metric_axes, "no validation metrics in the logs")
    metric_axes.set_title("validation (mean over patients)")
    metric_axes.set_xlabel("epoch")
    metric_axes.set_ylabel("score")

    if rates.size:
        lr_axes.plot(lr_epochs, rates, color="C3", marker="o", markersize=2)
    else:
        _write_empty(lr_axes, f"no '{_LR_TAG}' in the logs")
    lr_axes.set_title("learning rate")
    lr_axes.set_xlabel("epoch")
    lr_axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for axes in (loss_axes, metric_axes, lr_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    return figure


def _write_empty(axes: Any, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, color="0.4")


def _draw_patient_dice(rows: Sequence[dict[str, str]]) -> Figure:
    """Draw Dice per patient as bars, best first, with the mean and median over patients as lines."""
    figure = _new_figure(PATIENT_DICE_FILE)
    axes = figure.subplots()
    ranked = sorted(((row["patient"], _as_float(row.get("dice"))) for row in rows), key=lambda item: -item[1])
    names = [name for name, _ in ranked]
    scores = np.array([score for _, score in ranked])

    positions = np.arange(len(names))
    axes.bar(positions, scores, color="C0")
    mean, median = float(np.nanmean(scores)), float(np.nanmedian(scores))
    # The wide mean line stays visible under the dashed median line when the two values are close.
    axes.axhline(mean, color="C3", linestyle="-", linewidth=4, alpha=0.6, label=f"mean {mean:.3f}")
    axes.axhline(median, color="C1", linestyle="--", linewidth=1.5, label=f"median {median:.3f}")
    font_size = 8 if len(names) <= 30 else max(3, int(240 / len(names)))
    axes.set_xticks(positions, names, rotation=90, fontsize=font_size)
    axes.set_xlim(-0.6, len(names) - 0.4)
    axes.set_ylim(0.0, 1.0)
    axes.set_ylabel("Dice (whole volume)")
    axes.set_title(f"Dice per patient ({len(names)} patients)")
    axes.legend(loc="lower left")
    return figure


def _draw_samples(samples: Sequence[_Sample]) -> Figure:
    """Draw the chosen overlays in a grid, with patient, slice and Dice above each."""
    figure = _new_figure(SAMPLES_FILE)
    columns = _SAMPLE_COLUMNS
    rows = max(1, math.ceil(len(samples) / columns))
    panels = figure.subplots(rows, columns, squeeze=False).ravel()
    figure.suptitle("Sample predictions: FLAIR with the predicted outline (red) and the ground truth (green)")
    for panel, sample in zip(panels, samples):
        panel.imshow(matplotlib.image.imread(sample.path), interpolation="nearest")
        dice = "" if sample.dice is None or math.isnan(sample.dice) else f", patient Dice {sample.dice:.3f}"
        panel.set_title(f"{sample.patient}\nslice {sample.slice_number}{dice}", fontsize=8)
    for panel in panels:
        panel.set_axis_off()
    return figure


# ---------------------------------------------------------------- HTML


def _format_number(value: Any) -> str:
    number = _as_float(value)
    if math.isnan(number):
        return "n/a"
    if number.is_integer():
        return str(int(number))
    return f"{number:.1f}" if abs(number) >= 100 else f"{number:.3f}"


def _summary_table(summary: dict[str, Any]) -> str:
    header = "<tr><th>metric</th><th>mean</th><th>median</th><th>std</th><th>min</th><th>max</th><th>n</th></tr>"
    lines = [f"<p>{summary.get('n_patients', 0)} patients.</p>", "<table>", header]
    for name, stats in summary.get("metrics", {}).items():
        cells = "".join(f"<td>{_format_number(stats.get(key))}</td>" for key in ("mean", "median", "std", "min", "max"))
        lines.append(f"<tr><th>{html.escape(name)}</th>{cells}<td>{int(stats.get('n', 0))}</td></tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _patient_table(rows: Sequence[dict[str, str]]) -> str:
    columns = [name for name in rows[0] if name.startswith(_TABLE_PREFIXES)] if rows else []
    header = "".join(f"<th>{html.escape(name)}</th>" for name in ["patient", *columns])
    lines = ["<table>", f"<tr>{header}</tr>"]
    for row in rows:
        cells = "".join(f"<td>{_format_number(row.get(name))}</td>" for name in columns)
        lines.append(f"<tr><th>{html.escape(row['patient'])}</th>{cells}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _parameter_list(parameters: dict[str, Any]) -> str:
    names = ("epochs", "learning_rate", "fold", "context_radius", "spatial_dims", "patch_size", "device")
    items = [
        f"<li>{html.escape(name)}: {html.escape(json.dumps(parameters[name]))}</li>"
        for name in names if name in parameters
    ]
    return f"<ul>{''.join(items)}</ul>" if items else ""


def _index_html(run_dir: Path, report: _Report, figures: Sequence[str]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>LGG segmentation report</title>',
        "<style>body{font-family:sans-serif;margin:2em;max-width:1600px}img{max-width:100%}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "th:first-child{text-align:left}</style></head><body>",
        "<h1>LGG segmentation report</h1>",
        f"<p>Training run: <code>{html.escape(str(run_dir))}</code></p>",
        _parameter_list(report.parameters),
    ]
    if report.summary is not None:
        parts += ["<h2>Evaluation summary</h2>", _summary_table(report.summary)]
    titles = {
        LEARNING_CURVES_FILE: "Learning curves",
        PATIENT_DICE_FILE: "Dice per patient",
        SAMPLES_FILE: "Sample predictions",
    }
    for name in figures:
        parts += [f"<h2>{titles[name]}</h2>", f'<img src="{html.escape(name)}" alt="{titles[name]}">']
    if report.patient_rows:
        parts += ["<h2>Per-patient metrics</h2>", _patient_table(report.patient_rows)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- command


def write_report(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    eval_dir: str | os.PathLike | None = None,
    predictions: str | os.PathLike | None = None,
) -> Path:
    """Write the report figures and ``index.html``, and return the path of ``index.html``.

    Args:
        run_dir: a training run folder, with ``tensorboard/`` and ``run_info.json``.
        out: report folder (default ``run_dir/report``).
        eval_dir: output folder of ``python -m pipeline evaluate``, for the Dice figure and the tables.
        predictions: output folder of ``python -m pipeline predict``, for the sample grid.

    Raises:
        UserError: a folder is missing or lacks the files its command writes.
    """
    run_path = Path(run_dir)
    if not run_path.is_dir():
        raise UserError(f"Run folder not found: {run_path}. Give the --out folder of 'python -m pipeline train'.")
    if not (run_path / "tensorboard").is_dir():
        hint = ""
        if (run_path / "run" / "tensorboard").is_dir():
            hint = (f" For a demo folder, run: python -m pipeline report {run_path / 'run'} "
                    f"--eval {run_path / 'evaluation'} --predictions {run_path / 'predictions'}")
        raise UserError(
            f"No TensorBoard logs in {run_path / 'tensorboard'}: {run_path} is not a training run folder. "
            f"Give the --out folder of 'python -m pipeline train'.{hint}"
        )
    folder = Path(out) if out is not None else run_path / "report"
    report = _load_report(
        run_path,
        Path(eval_dir) if eval_dir is not None else None,
        Path(predictions) if predictions is not None else None,
    )

    figures = {LEARNING_CURVES_FILE: _draw_learning_curves(report.scalars, report.epoch_length)}
    if report.patient_rows:
        figures[PATIENT_DICE_FILE] = _draw_patient_dice(report.patient_rows)
    if report.samples:
        figures[SAMPLES_FILE] = _draw_samples(report.samples)
    elif predictions is not None:
        logger.warning("No overlays found in %s, so the report has no sample grid.", predictions)
    for name, figure in figures.items():
        atomic_write_bytes(folder / name, _png_bytes(figure))

    index = atomic_write_text(folder / INDEX_FILE, _index_html(run_path, report, list(figures)))
    logger.info("Wrote %s to %s", ", ".join([*figures, INDEX_FILE]), folder)
    return index


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` command to the ``python -m pipeline`` parser."""
    parser = subparsers.add_parser(
        "report",
        help="learning curves, Dice per patient, sample predictions and an index.html",
        description=(
            "Draw the learning curves of a training run from its TensorBoard logs and, with --eval and "
            "--predictions, the Dice per patient and sample predictions; write them with the summary table "
            f"to {INDEX_FILE}."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="training run folder (the --out of 'train')")
    parser.add_argument("--eval", default=None, metavar="DIR", help="output folder of 'python -m pipeline evaluate'")
    parser.add_argument(
        "--predictions", default=None, metavar="DIR", help="output folder of 'python -m pipeline predict'"
    )
    parser.add_argument("--out", default=None, metavar="DIR", help="report folder (default: RUN_DIR/report)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the report for the ``report`` command and print where it is."""
    index = write_report(args.run_dir, args.out, args.eval, args.predictions)
    print(f"Report: {index}")
    return 0
