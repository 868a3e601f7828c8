"""Patient-level cross-validation splits stored as MONAI-style datalists.

A datalist is a JSON file whose ``training`` list has one entry per patient::

    {"patient": "TCGA_CS_4941_19960909", "image": "TCGA_CS_4941_19960909",
     "label": "TCGA_CS_4941_19960909", "fold": 0, "site": "CS", "tumour_pixels": 12345}

``image`` and ``label`` are patient folders relative to the dataset folder, so the
file also works with ``monai.data.load_decathlon_datalist(..., base_dir=dataset_dir)``.
The validation set of fold ``k`` is every patient with ``"fold": k``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.discovery import discover_patients
from pipeline.io_utils import atomic_write_text
from transforms.errors import DatasetError
from transforms.slices import PatientSlices
from transforms.sources import read_tiff

__all__ = ["build_datalist", "fold_files", "load_datalist", "site_of", "tumour_pixels", "validate_datalist"]

logger = logging.getLogger(__name__)

_SITE_PATTERN = re.compile(r"^TCGA_([A-Z0-9]{2})_")


def site_of(patient: str) -> str:
    """Return the acquisition site code of a TCGA patient id (``CS`` in ``TCGA_CS_4941_19960909``)."""
    match = _SITE_PATTERN.match(patient)
    return match.group(1) if match else "unknown"


def tumour_pixels(patient: PatientSlices) -> int:
    """Count the tumour pixels over all mask slices of a patient."""
    return int(sum(np.count_nonzero(read_tiff(mask)) for mask in patient.masks))


def _assign_folds(patients: list[PatientSlices], burdens: dict[str, int], num_folds: int, seed: int) -> dict[str, int]:
    """Assign folds so that each fold gets its share of every site and of tumour burden.

    Within each site, patients sorted by tumour burden are dealt in groups of
    ``num_folds``. Each group goes to the folds with the fewest patients so far,
    the heaviest patient to the fold with the least tumour so far, so fold sizes
    differ by at most one and tumour burden spreads evenly.
    """
    rng = np.random.default_rng(seed)
    by_site: dict[str, list[str]] = defaultdict(list)
    for patient in patients:
        by_site[site_of(patient.patient)].append(patient.patient)

    counts = np.zeros(num_folds, dtype=int)
    burden_sums = np.zeros(num_folds, dtype=np.int64)
    folds: dict[str, int] = {}
    for site in sorted(by_site):
        ranked = sorted(by_site[site], key=lambda p: (-burdens[p], p))
        for start in range(0, len(ranked), num_folds):
            group = ranked[start:start + num_folds]
            tie_break = rng.permutation(num_folds)
            order = sorted(range(num_folds), key=lambda f: (counts[f], burden_sums[f], tie_break[f]))
            for patient, fold in zip(group, order):
                folds[patient] = int(fold)
                counts[fold] += 1
                burden_sums[fold] += burdens[patient]
    return folds


def build_datalist(dataset_dir: str | os.PathLike, num_folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Split the patients of a dataset into ``num_folds`` stratified folds.

    Raises:
        DatasetError: the dataset is invalid, or has fewer patients than folds.
        ValueError: ``num_folds`` is below 2.
    """
    if num_folds < 2:
        raise ValueError(f"num_folds must be 2 or more, got {num_folds}.")
    root = Path(dataset_dir)
    patients = discover_patients(root)
    if len(patients) < num_folds:
        raise DatasetError(
            f"{root} has {len(patients)} patients, fewer than the {num_folds} folds requested. Use fewer folds."
        )
    burdens = {p.patient: tumour_pixels(p) for p in patients}
    folds = _assign_folds(patients, burdens, num_folds, seed)

    entries = []
    for patient in patients:
        folder = os.path.relpath(os.path.dirname(patient.images[0]), root)
        entries.append({
            "patient": patient.patient,
            "image": folder,
            "label": folder,
            "fold": folds[patient.patient],
            "site": site_of(patient.patient),
            "slices": patient.num_slices,
            "tumour_pixels": burdens[patient.patient],
        })
    return {
        "description": "Patient-level folds of the Kaggle LGG MRI segmentation dataset, stratified by site and tumour burden.",
        "num_folds": num_folds,
        "seed": seed,
        "training": entries,
    }


def load_datalist(path: str | os.PathLike) -> dict[str, Any]:
    """Read a datalist JSON file.

    Raises:
        DatasetError: the file is missing or not a datalist.
    """
    file = Path(path)
    try:
        content = json.loads(file.read_text())
    except FileNotFoundError:
        raise DatasetError(f"Datalist not found: {file}. Create one with 'python -m pipeline split'.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"Datalist {file} is not valid JSON ({error}).") from None
    if not isinstance(content, dict) or not isinstance(content.get("training"), list):
        raise DatasetError(f"Datalist {file} has no 'training' list. Create one with 'python -m pipeline split'.")
    return content


def validate_datalist(datalist: dict[str, Any], dataset_dir: str | os.PathLike, source: str = "datalist") -> int:
    """Check a datalist against a dataset folder and return its number of folds.

    Raises:
        DatasetError: an entry lacks fields, names a patient folder that is not in
            the dataset, or a patient appears more than once.
    """
    root = Path(dataset_dir)
    seen: dict[str, int] = {}
    folds = set()
    for index, entry in enumerate(datalist["training"]):
        if not isinstance(entry, dict) or not {"image", "label", "fold"} <= entry.keys():
            raise DatasetError(f"Entry {index} of {source} needs 'image', 'label' and 'fold' fields; got {entry!r}.")
        name = entry.get("patient", entry["image"])
        if name in seen:
            raise DatasetError(
                f"Patient {name} appears twice in {source} (folds {seen[name]} and {entry['fold']}). "
                "Each patient belongs to exactly one fold."
            )
        if not isinstance(entry["fold"], int) or entry["fold"] < 0:
            raise DatasetError(f"Patient {name} in {source} has invalid fold {entry['fold']!r}; expected 0 or more.")
        seen[name] = entry["fold"]
        folds.add(entry["fold"])
        for key in ("image", "label"):
            if not (root / entry[key]).is_dir():
                raise DatasetError(
                    f"Patient {name} in {source} is not in the dataset: {root / entry[key]} does not exist. "
                    "Use the datalist made for this dataset or create a new one with 'python -m pipeline split'."
                )
    return int(datalist.get("num_folds", max(folds) + 1 if folds else 0))


def fold_files(
    dataset_dir: str | os.PathLike,
    datalist_file: str | os.PathLike | None,
    fold: int,
    part: str,
    num_folds: int = 5,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Return the training or validation entries of one fold with absolute patient folders.

    Args:
        dataset_dir: the ``kaggle_3m`` folder.
        datalist_file: a datalist JSON file; empty or None splits the dataset with
            ``num_folds`` and ``seed``.
        fold: the validation fold.
        part: ``"training"`` (all other folds) or ``"validation"`` (fold ``fold``).

    Raises:
        DatasetError: the dataset or datalist is invalid, or ``fold`` is out of range.
    """
    if part not in ("training", "validation"):
        raise ValueError(f"part must be 'training' or 'validation', got {part!r}.")
    if not dataset_dir or not Path(dataset_dir).is_dir():
        raise DatasetError(f"Dataset folder not found: {dataset_dir!r}. Set dataset_dir to the kaggle_3m folder.")
    if datalist_file:
        datalist = load_datalist(datalist_file)
        source = str(datalist_file)
    else:
        datalist = build_datalist(dataset_dir, num_folds=num_folds, seed=seed)
        source = "the generated datalist"
    folds = validate_datalist(datalist, dataset_dir, source)
    if not isinstance(fold, int) or not 0 <= fold < folds:
        raise DatasetError(f"Fold {fold!r} is out of range: {source} has folds 0 to {folds - 1}.")

    root = Path(dataset_dir)
    selected = []
    for entry in datalist["training"]:
        if (entry["fold"] == fold) == (part == "validation"):
            item = dict(entry)
            item["image"] = str(root / entry["image"])
            item["label"] = str(root / entry["label"])
            selected.append(item)
    selected.sort(key=lambda e: e.get("patient", e["image"]))
    if not selected:
        raise DatasetError(f"The {part} set of fold {fold} in {source} is empty. Use more patients or fewer folds.")
    return selected


def write_datalist(datalist: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a datalist as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(datalist, indent=2) + "\n")
