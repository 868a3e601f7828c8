"""Ignite handler that computes per-patient metrics during evaluation and writes the reports."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from pipeline.metrics import patient_metrics, summarise, write_metrics_csv, write_summary

__all__ = ["PatientMetricsSaver", "format_summary"]

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = ("dice", "iou", "hd95", "slice_sensitivity", "slice_specificity")


class PatientMetricsSaver:
    """Compute Dice, IoU, HD95, slice detection and volumes for every evaluated patient.

    Attach it to a MONAI evaluator whose post-processing yields one-hot ``pred``
    and ``label`` (2 channels) per patient. At the end of the run it writes
    ``patient_metrics.csv`` and ``summary.json`` to ``output_dir`` and logs the
    summary table.

    Example::

        PatientMetricsSaver("eval").attach(evaluator)

    Args:
        output_dir: folder for the reports.
        spacing: voxel spacing in mm, or None to report distances in pixels.
    """

    def __init__(self, output_dir: str | os.PathLike, spacing: Any = None) -> None:
        self.output_dir = Path(output_dir)
        self.spacing = spacing
        self.rows: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def _collect(self, engine: Engine) -> None:
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for item, output in zip(batch, outputs):
            meta = getattr(item.get("image"), "meta", {}) or {}
            pred = _tumour_channel(output["pred"])
            truth = _tumour_channel(output["label"])
            row = {"patient": meta.get("patient_id", f"volume_{len(self.rows)}")}
            row.update(patient_metrics(pred, truth, self.spacing))
            self.rows.append(row)

    def _write(self, engine: Engine) -> None:
        if not self.rows:
            logger.warning("No patients were evaluated; nothing written to %s", self.output_dir)
            return
        self.rows.sort(key=lambda row: row["patient"])
        self.summary = summarise(self.rows)
        write_metrics_csv(self.rows, self.output_dir / "patient_metrics.csv")
        write_summary(self.summary, self.output_dir / "summary.json")
        logger.info("Evaluation of %d patients:\n%s", len(self.rows), format_summary(self.summary))
        logger.info("Per-patient metrics: %s", self.output_dir / "patient_metrics.csv")


def _tumour_channel(volume: torch.Tensor) -> torch.Tensor:
    volume = volume.detach().cpu()
    return volume[1] if volume.shape[0] > 1 else volume[0]


def format_summary(summary: dict[str, Any]) -> str:
    """Format the summary of :func:`pipeline.metrics.summarise` as a fixed-width table."""
    lines = [f"{'metric':<24}{'mean':>9}{'median':>9}{'std':>9}{'min':>9}{'max':>9}{'n':>5}"]
    for name, stats in summary["metrics"].items():
        if not name.startswith(SUMMARY_COLUMNS):
            continue
        cells = [stats.get(k) for k in ("mean", "median", "std", "min", "max")]
        text = "".join(f"{c:>9.3f}" if c is not None else f"{'-':>9}" for c in cells)
        lines.append(f"{name:<24}{text}{stats.get('n', 0):>5}")
    return "\n".join(lines)
