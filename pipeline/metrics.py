"""Per-patient segmentation metrics for binary tumour masks, their summary over patients, and report files.

A patient's prediction and ground truth are binary volumes ``(x, y, slices)``, or
channel-first ``(1, x, y, slices)``. Distances and volumes are in voxel units unless
the caller gives a voxel spacing in mm, because the Kaggle LGG dataset does not
record spacing. Column names in the written reports carry the unit, for example
``hd95_px`` or ``hd95_mm``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

from pipeline.io_utils import atomic_write_text

__all__ = ["patient_metrics", "summarise", "write_metrics_csv", "write_summary"]

# Metrics that summarise() aggregates. Other keys in a row, such as a patient id, are carried
# into the CSV but not summarised.
METRIC_KEYS = (
    "dice",
    "iou",
    "hd95",
    "slice_sensitivity",
    "slice_specificity",
    "pred_volume",
    "true_volume",
    "true_positive_slices",
    "false_negative_slices",
    "true_negative_slices",
    "false_positive_slices",
)
DISTANCE_KEYS = ("hd95", "image_diagonal")
VOLUME_KEYS = ("pred_volume", "true_volume")
UNIT_KEYS = ("distance_unit", "volume_unit")


def patient_metrics(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    spacing: float | Sequence[float] | None = None,
) -> dict[str, Any]:
    """Compute overlap, surface-distance, slice-detection and volume metrics for one patient.

    ``dice`` and ``iou`` are computed over the whole volume. ``hd95`` is the symmetric
    95th-percentile Hausdorff distance computed by MONAI's ``compute_hausdorff_distance``.
    Surface voxels are mask voxels with a face neighbour outside the mask or outside the
    volume. For each mask, the distances from its surface voxel centres to the nearest
    surface voxel of the other mask give a 95th percentile, and ``hd95`` is the larger one.

    A slice is positive when it contains at least one tumour voxel. Slice counts use
    confusion-matrix names: ``true_positive_slices`` are positive in both masks,
    ``false_negative_slices`` only in ``truth``, ``false_positive_slices`` only in
    ``pred`` and ``true_negative_slices`` in neither. ``slice_sensitivity`` is
    TP / (TP + FN) and ``slice_specificity`` is TN / (TN + FP).

    Empty masks:

    - Both masks empty: Dice 1, IoU 1 and HD95 0, because the prediction is correct.
      The BraTS 2023 evaluation code (``BraTS-2023-Metrics/eval.py``) uses the same rule.
      nnU-Net v2 reports NaN and leaves such cases out of its mean instead.
    - Exactly one mask empty: Dice 0 and IoU 0. HD95 is NaN because one surface is
      missing. :func:`summarise` replaces that NaN with ``image_diagonal``, the
      length of the volume's diagonal (shape times spacing), which is larger than any
      distance inside the volume. BraTS 2023 does the same with 374 mm, the diagonal
      of its 240 x 240 x 155 grid of 1 mm voxels.
    - No tumour slice in ``truth``: ``slice_sensitivity`` is NaN. No tumour-free slice
      in ``truth``: ``slice_specificity`` is NaN. :func:`summarise` leaves these NaN
      values out and counts them.

    Args:
        pred: predicted binary mask, values 0 and 1 (or bool), as a numpy array or torch tensor.
        truth: ground-truth binary mask with the same shape as ``pred``.
        spacing: voxel spacing in mm along ``(x, y, slices)``, or one number for isotropic
            voxels. With ``None``, distances are in voxels (``px``) and volumes in voxel counts.

    Returns:
        A dict with ``dice``, ``iou``, ``hd95``, ``distance_unit`` (``"mm"`` or ``"px"``),
        ``pred_volume`` and ``true_volume`` (mm^3 or voxel count), ``volume_unit``
        (``"mm3"`` or ``"voxels"``), ``slice_sensitivity``, ``slice_specificity``, the
        four slice counts and ``image_diagonal`` in the distance unit.

    Raises:
        ValueError: the masks have different or unsupported shapes, contain values other
            than 0 and 1, or ``spacing`` is not positive or has the wrong length.
    """
    pred_mask = _as_binary_volume(pred, "pred")
    true_mask = _as_binary_volume(truth, "truth")
    if pred_mask.shape != true_mask.shape:
        raise ValueError(
            f"pred has shape {pred_mask.shape} but truth has shape {true_mask.shape}. "
            "Pass the prediction and ground truth of the same patient, on the same grid."
        )
    voxel_spacing = _as_spacing(spacing)

    pred_voxels = int(pred_mask.sum())
    true_voxels = int(true_mask.sum())
    intersection = int(np.logical_and(pred_mask, true_mask).sum())
    union = pred_voxels + true_voxels - intersection
    if union == 0:
        dice, iou = 1.0, 1.0
    else:
        dice = 2.0 * intersection / (pred_voxels + true_voxels)
        iou = intersection / union

    hd95 = _hd95(pred_mask, true_mask, voxel_spacing, pred_voxels, true_voxels)

    slice_counts = _slice_counts(pred_mask, true_mask)
    sensitivity = _ratio(slice_counts["true_positive_slices"], slice_counts["false_negative_slices"])
    specificity = _ratio(slice_counts["true_negative_slices"], slice_counts["false_positive_slices"])

    if voxel_spacing is None:
        distance_unit, volume_unit = "px", "voxels"
        pred_volume: float | int = pred_voxels
        true_volume: float | int = true_voxels
        extent = np.asarray(pred_mask.shape, dtype=np.float64)
    else:
        distance_unit, volume_unit = "mm", "mm3"
        voxel_volume = float(np.prod(voxel_spacing))
        pred_volume = pred_voxels * voxel_volume
        true_volume = true_voxels * voxel_volume
        extent = np.asarray(pred_mask.shape, dtype=np.float64) * np.asarray(voxel_spacing)

    return {
        "dice": float(dice),
        "iou": float(iou),
        "hd95": hd95,
        "distance_unit": distance_unit,
        "pred_volume": pred_volume,
        "true_volume": true_volume,
        "volume_unit": volume_unit,
        "slice_sensitivity": sensitivity,
        "slice_specificity": specificity,
        **slice_counts,
        "image_diagonal": float(np.sqrt(np.sum(extent**2))),
    }


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate per-patient metric rows into mean, median, std, min and max per metric.

    Only the metrics that :func:`patient_metrics` produces are summarised, and other
    keys such as a patient id are ignored. NaN values are left out of the statistics and
    counted in ``n_excluded``, and ``n`` is the number of patients that contributed.
    The exception is HD95: a NaN HD95 (exactly one mask empty) is replaced by the row's
    ``image_diagonal`` and counted in ``n_worst_case``, so that predicting nothing
    for a patient is penalised instead of being dropped. ``std`` is the population
    standard deviation (``ddof=0``), so a single patient gives 0.

    The result never contains NaN. A metric with no defined value in any row gets
    ``None`` for each statistic.

    Args:
        rows: dicts returned by :func:`patient_metrics`, optionally with extra keys.

    Returns:
        ``{"n_patients": int, "metrics": {name: {"mean", "median", "std", "min", "max",
        "n", "n_excluded"}}}``, where each name carries its unit (``hd95_px``,
        ``pred_volume_mm3``) as in the CSV written by :func:`write_metrics_csv`.

    Raises:
        ValueError: the rows mix units, because some patients have a spacing and others do not.
    """
    distance_unit, volume_unit = _common_units(rows)

    metrics: dict[str, dict[str, Any]] = {}
    for key in METRIC_KEYS:
        if not any(key in row for row in rows):
            continue

        values = []
        n_excluded = 0
        n_worst_case = 0
        for row in rows:
            value = _as_float(row.get(key))
            if math.isnan(value) and key == "hd95":
                value = _as_float(row.get("image_diagonal"))
                n_worst_case += 0 if math.isnan(value) else 1
            if math.isnan(value):
                n_excluded += 1
            else:
                values.append(value)

        statistics = _statistics(values)
        statistics["n_excluded"] = n_excluded
        if key == "hd95":
            statistics["n_worst_case"] = n_worst_case
        metrics[_column_name(key, distance_unit, volume_unit)] = statistics

    return {"n_patients": len(rows), "metrics": metrics}


def write_metrics_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write one CSV row per patient, atomically, and return the path.

    Columns are the keys of the rows in order of first appearance. The unit keys are
    dropped and their unit is appended to the distance and volume columns instead
    (``hd95_mm``, ``pred_volume_voxels``). A NaN value is written as ``nan`` and a key
    missing from a row as an empty cell.

    Raises:
        ValueError: ``rows`` is empty, or the rows mix units.
    """
    if not rows:
        raise ValueError(f"No metric rows to write to {path}. Evaluate at least one patient first.")
    distance_unit, volume_unit = _common_units(rows)

    keys: list[str] = []
    for row in rows:
        keys.extend(key for key in row if key not in keys and key not in UNIT_KEYS)

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([_column_name(key, distance_unit, volume_unit) for key in keys])
    for row in rows:
        writer.writerow([_format_cell(row.get(key)) for key in keys])
    return atomic_write_text(path, buffer.getvalue())


def write_summary(summary: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write the output of :func:`summarise` as indented JSON, atomically, and return the path.

    Raises:
        ValueError: the summary contains NaN or infinity, which JSON cannot represent.
    """
    text = json.dumps(summary, indent=2, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def _as_binary_volume(mask: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(
            f"{name} has shape {array.shape}, expected (x, y, slices) or (1, x, y, slices). "
            "Pass one patient's single-channel mask."
        )

    if array.dtype != bool:
        is_binary = np.logical_or(array == 0, array == 1)
        if not is_binary.all():
            example = array[~is_binary].flat[0]
            raise ValueError(
                f"{name} contains values other than 0 and 1, for example {example}. "
                "Threshold probabilities or take the argmax before computing metrics."
            )
    return array.astype(bool)


def _as_spacing(spacing: float | Sequence[float] | None) -> tuple[float, float, float] | None:
    if spacing is None:
        return None
    if np.ndim(spacing) == 0:
        values = (float(spacing),) * 3  # type: ignore[arg-type]
    else:
        values = tuple(float(value) for value in spacing)  # type: ignore[union-attr]
    if len(values) != 3:
        raise ValueError(f"spacing {spacing} has {len(values)} values, expected 3 for (x, y, slices) or one number.")
    if not all(math.isfinite(value) and value > 0 for value in values):
        raise ValueError(f"spacing {spacing} is invalid: each value must be a positive voxel size in mm.")
    return values  # type: ignore[return-value]


def _hd95(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: tuple[float, float, float] | None,
    pred_voxels: int,
    true_voxels: int,
) -> float:
    if pred_voxels == 0 and true_voxels == 0:
        return 0.0
    if pred_voxels == 0 or true_voxels == 0:
        return math.nan

    # MONAI expects one-hot (batch, channel, x, y, slices) input. The mask is the only channel,
    # so include_background=True keeps it.
    distance = compute_hausdorff_distance(
        torch.from_numpy(pred)[None, None],
        torch.from_numpy(truth)[None, None],
        include_background=True,
        percentile=95,
        spacing=None if spacing is None else list(spacing),
    )
    return float(distance.item())


def _slice_counts(pred: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    pred_slices = pred.any(axis=(0, 1))
    true_slices = truth.any(axis=(0, 1))
    return {
        "true_positive_slices": int(np.sum(pred_slices & true_slices)),
        "false_negative_slices": int(np.sum(~pred_slices & true_slices)),
        "true_negative_slices": int(np.sum(~pred_slices & ~true_slices)),
        "false_positive_slices": int(np.sum(pred_slices & ~true_slices)),
    }


def _ratio(hits: int, misses: int) -> float:
    total = hits + misses
    return hits / total if total else math.nan


def _as_float(value: Any) -> float:
    """Convert a metric value to float, mapping ``None`` and non-numbers to NaN."""
    if value is None or isinstance(value, (bool, str)):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _statistics(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"mean": None, "median": None, "std": None, "min": None, "max": None, "n": 0}
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "median": float(np.median(array)),
        "std": float(array.std()),
        "min": float(array.min()),
        "max": float(array.max()),
        "n": len(values),
    }


def _common_units(rows: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    distance_units = {row.get("distance_unit", "px") for row in rows}
    volume_units = {row.get("volume_unit", "voxels") for row in rows}
    if len(distance_units) > 1 or len(volume_units) > 1:
        raise ValueError(
            f"Metric rows mix units ({sorted(distance_units)}, {sorted(volume_units)}). "
            "Compute every patient's metrics either with a spacing or without one."
        )
    distance_unit = distance_units.pop() if distance_units else "px"
    volume_unit = volume_units.pop() if volume_units else "voxels"
    return distance_unit, volume_unit


def _column_name(key: str, distance_unit: str, volume_unit: str) -> str:
    if key in DISTANCE_KEYS:
        return f"{key}_{distance_unit}"
    if key in VOLUME_KEYS:
        return f"{key}_{volume_unit}"
    return key


def _format_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value
