"""``python -m pipeline predict``: segment new patients with the bundle's inference config.

The input is a folder of patient folders (``kaggle_3m``), one patient folder, the
Kaggle ``archive.zip``, or one NIfTI image volume as ``python -m pipeline convert``
writes it. The masks come from ``configs/inference.json``, run through
:func:`pipeline.bundle_runner.run_config`. The output folder receives:

- ``<patient>/<patient>_<n>_mask.tif``: uint8 masks (0 and 255) in the orientation of
  the input TIFF slices.
- ``<patient>/<patient>_mask.nii.gz``: the same mask as one uint8 NIfTI volume (0 and 1)
  on the voxel grid of the input. For NIfTI input it carries the input's affine.
- ``<patient>/overlays/<patient>_<n>_overlay.png``: each slice where the prediction or
  the ground truth has tumour, as FLAIR in grey with the predicted outline in red and
  the ground-truth outline in green (yellow where both meet). The ground truth is
  drawn when the input has masks.
- ``predictions.csv``: slices, slices with tumour, tumour pixels and tumour volume per patient.
- ``config.json``: the merged config with the overrides applied.
- ``manifest.json``: every file above. A rerun into the same folder deletes the files
  of the previous manifest and nothing else, and it stops before writing anything if
  one of its output files exists without being listed there.

The bundle writes into a hidden staging folder inside the output folder first, so a
failed run leaves the previous results in place.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import matplotlib.image
import nibabel as nib
import numpy as np
import tifffile

from pipeline.bundle_runner import default_bundle_dir, run_config
from pipeline.cli import UserError
from pipeline.discovery import discover_patients
from pipeline.evaluate import add_model_arguments, model_overrides
from pipeline.handlers import overlay_rgb
from pipeline.io_utils import atomic_write_bytes, atomic_write_text, check_output_outside
from transforms.errors import DatasetError
from transforms.io import CHANNEL_NAMES
from transforms.slices import PatientSlices
from transforms.sources import read_tiff

__all__ = [
    "MANIFEST_FILE",
    "OVERLAY_FOLDER",
    "PREDICTIONS_FILE",
    "PatientPrediction",
    "is_nifti",
    "mask_file",
    "overlay_file",
    "predict",
    "register",
    "run",
]

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.csv"
MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "config.json"
OVERLAY_FOLDER = "overlays"
NIFTI_SUFFIXES = (".nii.gz", ".nii")

# inference.json uses a 2D slice inferer, so 3D models are evaluated but not predicted.
PREDICT_MODES = ("2d", "2.5d")

_FLAIR = CHANNEL_NAMES.index("FLAIR")
_STAGING_PREFIX = ".predict-staging-"


@dataclass
class PatientPrediction:
    """Counts of one patient's predicted mask, as written to ``predictions.csv``.

    Attributes:
        patient: patient id.
        slices: number of slices.
        tumour_slices: slices with at least one predicted tumour pixel.
        tumour_pixels: predicted tumour pixels over all slices.
        tumour_volume: tumour volume in ``volume_unit``.
        volume_unit: ``"mm3"`` with a known spacing, else ``"voxels"``.
    """

    patient: str
    slices: int
    tumour_slices: int
    tumour_pixels: int
    tumour_volume: float
    volume_unit: str


@dataclass
class _Input:
    """The patients to predict, in the Kaggle layout, and the geometry of a NIfTI input."""

    dataset_dir: Path
    patients: list[PatientSlices]
    nifti_affine: np.ndarray | None = None
    nifti_spacing: tuple[float, float, float] | None = None


def mask_file(patient: str, number: int) -> str:
    """Return the path of a predicted mask slice relative to the output folder."""
    return f"{patient}/{patient}_{number}_mask.tif"


def overlay_file(patient: str, number: int) -> str:
    """Return the path of a slice's overlay PNG relative to the output folder."""
    return f"{patient}/{OVERLAY_FOLDER}/{patient}_{number}_overlay.png"


def _nifti_mask_file(patient: str) -> str:
    return f"{patient}/{patient}_mask.nii.gz"


# ---------------------------------------------------------------- NIfTI input


def is_nifti(path: str | os.PathLike) -> bool:
    """Return True when ``path`` names a NIfTI file (``.nii`` or ``.nii.gz``)."""
    return os.fspath(path).lower().endswith(NIFTI_SUFFIXES)


def _nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _as_uint8(data: np.ndarray, path: Path) -> np.ndarray:
    if data.dtype == np.uint8:
        return data
    if not np.issubdtype(data.dtype, np.number) or not np.all(np.isfinite(data)):
        raise DatasetError(f"{path} contains non-numeric or non-finite values. Give an 8-bit image volume.")
    if data.min() < 0 or data.max() > 255 or not np.array_equal(data, np.round(data)):
        raise DatasetError(
            f"{path} has values from {data.min()} to {data.max()}, but predict reads 8-bit intensities (whole "
            "numbers from 0 to 255) like the Kaggle TIFF slices. Convert the volume to uint8 first."
        )
    return data.astype(np.uint8)


def _read_nifti_image(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read a 3-channel image volume as uint8 ``(x, y, slices, channel)``."""
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises several types for damaged files
        raise DatasetError(f"Cannot read NIfTI file {path} ({type(error).__name__}: {error}).") from None

    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim != 4 or data.shape[3] != len(CHANNEL_NAMES):
        raise DatasetError(
            f"{path} has shape {data.shape}, but predict needs (x, y, slices, 3) or the vector layout "
            f"(x, y, slices, 1, 3) with the channels {', '.join(CHANNEL_NAMES)}, as 'python -m pipeline convert' "
            "writes it."
        )
    return _as_uint8(data, path), image


def _read_nifti_mask(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """Read a mask volume beside a NIfTI image as a boolean ``(x, y, slices)`` array."""
    try:
        data = np.asanyarray(nib.load(path).dataobj)
    except Exception as error:  # nibabel raises several types for damaged files
        raise DatasetError(f"Cannot read NIfTI mask {path} ({type(error).__name__}: {error}).") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.shape != shape:
        raise DatasetError(f"Mask {path} has shape {data.shape}, but its image has {shape}. Give the matching mask.")
    values = np.unique(data)
    if not set(values.tolist()) <= {0, 1, 255}:
        raise DatasetError(f"Mask {path} has values {values[:5].tolist()}, but only 0, 1 and 255 are allowed.")
    return data != 0


def _write_tiff(path: Path, data: np.ndarray, photometric: str) -> None:
    tifffile.imwrite(path, np.ascontiguousarray(data), photometric=photometric)


def _nifti_as_slices(path: Path, root: Path) -> _Input:
    """Write a NIfTI image volume (and its mask, if one lies beside it) as Kaggle TIFF slices under ``root``.

    Slice ``n`` is ``volume[:, :, n - 1]`` transposed to ``[row, column]``, the inverse of
    ``python -m pipeline convert``, so the TIFF loader gives the bundle the same volume
    and metadata as for the original TIFF slices.
    """
    data, image = _read_nifti_image(path)
    stem = _nifti_stem(path)
    patient = stem[: -len("_image")] if stem.endswith("_image") and len(stem) > len("_image") else stem

    mask = None
    for suffix in NIFTI_SUFFIXES:
        candidate = path.with_name(f"{patient}_mask{suffix}")
        if candidate.is_file() and candidate != path:
            mask = _read_nifti_mask(candidate, data.shape[:3])
            logger.info("Ground truth for the overlays: %s", candidate)
            break

    folder = root / patient
    folder.mkdir(parents=True)
    for index in range(data.shape[2]):
        _write_tiff(folder / f"{patient}_{index + 1}.tif", data[:, :, index, :].transpose(1, 0, 2), "rgb")
        if mask is not None:
            slice_mask = np.where(mask[:, :, index].T, 255, 0).astype(np.uint8)
            _write_tiff(folder / f"{patient}_{index + 1}_mask.tif", slice_mask, "minisblack")

    zooms = tuple(float(value) for value in image.header.get_zooms()[:3])
    logger.info("Read %s: %d slices of %dx%d, voxel size %s", path, data.shape[2], data.shape[0], data.shape[1], zooms)
    return _Input(
        dataset_dir=folder,
        patients=discover_patients(folder, require_masks=False),
        nifti_affine=image.affine,
        nifti_spacing=zooms,  # type: ignore[arg-type]
    )


@contextlib.contextmanager
def _open_input(data: Path) -> Iterator[_Input]:
    """Yield the patients of ``data``, after writing a NIfTI volume as TIFF slices to a temporary folder."""
    if data.is_file() and is_nifti(data):
        with tempfile.TemporaryDirectory(prefix="lgg-predict-") as temporary:
            yield _nifti_as_slices(data, Path(temporary))
        return
    yield _Input(dataset_dir=data, patients=discover_patients(data, require_masks=False))


# ---------------------------------------------------------------- manifest


def _read_manifest(out: Path) -> set[str]:
    """Return the files listed by an earlier run's manifest, or an empty set when there is none.

    Raises:
        UserError: the manifest exists but is not a manifest of this command.
    """
    path = out / MANIFEST_FILE
    if not path.exists():
        return set()
    try:
        content = json.loads(path.read_text())
        files = content["files"]
        if content.get("command") != "predict" or not all(isinstance(name, str) for name in files):
            raise ValueError("not a predict manifest")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"{path} exists but is not a manifest of 'predict' ({error}). Choose another output folder."
        ) from None
    return {name for name in files if _is_safe_relative(name)}


def _is_safe_relative(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return bool(parts) and not PurePosixPath(name).is_absolute() and ".." not in parts


def _write_manifest(out: Path, files: set[str], data: Path) -> None:
    content = {"command": "predict", "input": str(data), "files": sorted(files)}
    atomic_write_text(out / MANIFEST_FILE, json.dumps(content, indent=2) + "\n")


def _check_foreign_files(out: Path, names: set[str], own: set[str]) -> None:
    """Raise when any of ``names`` exists in ``out`` without being listed in the previous manifest.

    Raises:
        UserError: writing would replace a file that this command did not write.
    """
    foreign = sorted(name for name in names if name not in own and (out / name).exists())
    if foreign:
        examples = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UserError(
            f"Output folder {out} already contains files that an earlier 'predict' did not write ({examples}). "
            "Choose an empty output folder, or move those files away."
        )


def _planned_files(patients: Sequence[PatientSlices], overlays: bool) -> set[str]:
    """Return every file a run can write, relative to the output folder."""
    names = {PREDICTIONS_FILE, CONFIG_FILE}
    for patient in patients:
        names.add(_nifti_mask_file(patient.patient))
        for number in patient.numbers:
            names.add(mask_file(patient.patient, number))
            if overlays:
                names.add(overlay_file(patient.patient, number))
    return names


def _replace_outputs(out: Path, staging: Path, old: set[str], data: Path) -> set[str]:
    """Move the staged files into ``out`` and delete the previous run's files that this run did not write again."""
    new = {path.relative_to(staging).as_posix() for path in staging.rglob("*") if path.is_file()}
    _check_foreign_files(out, new, old)

    # A manifest of old and new files first, so an interrupted replacement leaves every file listed.
    _write_manifest(out, old | new, data)
    for name in sorted(old - new):
        _delete_own_file(out, name)
    for name in sorted(new):
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, target)
    _write_manifest(out, new, data)
    return new


def _delete_own_file(out: Path, name: str) -> None:
    """Delete one file of an earlier run, and the folders it leaves empty, up to ``out``.

    A file whose folder resolves outside ``out``, through a symbolic link, is left alone.
    """
    path = out / name
    root = Path(os.path.realpath(out))
    parent = Path(os.path.realpath(path.parent))
    if parent != root and root not in parent.parents:
        logger.warning("Not deleting %s of the earlier run: its folder lies outside %s.", path, out)
        return
    if path.is_symlink() or path.is_file():
        path.unlink()
    folder = path.parent
    while folder != out and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


# ---------------------------------------------------------------- reports


def _read_masks(folder: Path, patient: PatientSlices) -> np.ndarray:
    """Read a patient's predicted TIFF masks as a boolean ``(slices, rows, columns)`` array."""
    slices = []
    for number in patient.numbers:
        path = folder / mask_file(patient.patient, number)
        if not path.is_file():
            raise DatasetError(f"The bundle wrote no mask {path}. Check the inference config's output_dir.")
        slices.append(tifffile.imread(path) > 0)
    return np.stack(slices)


def _overlay_png(image_source: str, truth_source: str | None, prediction: np.ndarray) -> bytes:
    flair = read_tiff(image_source)[..., _FLAIR].astype(np.float32)
    truth = read_tiff(truth_source) > 0 if truth_source else None
    picture = overlay_rgb(flair, truth, prediction)
    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, picture.transpose(1, 2, 0), format="png")
    return buffer.getvalue()


def _write_overlays(folder: Path, patient: PatientSlices, predicted: np.ndarray) -> int:
    """Write an overlay PNG for each slice with predicted or true tumour, and return how many were written."""
    written = 0
    for index, number in enumerate(patient.numbers):
        truth_source = patient.masks[index] if patient.masks else None
        has_truth = truth_source is not None and bool(read_tiff(truth_source).any())
        if not predicted[index].any() and not has_truth:
            continue
        png = _overlay_png(patient.images[index], truth_source, predicted[index])
        atomic_write_bytes(folder / overlay_file(patient.patient, number), png)
        written += 1
    return written


def _predictions_csv(rows: Sequence[PatientPrediction]) -> str:
    unit = rows[0].volume_unit if rows else "voxels"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["patient", "slices", "tumour_slices", "tumour_pixels", f"tumour_volume_{unit}"])
    for row in rows:
        writer.writerow([row.patient, row.slices, row.tumour_slices, row.tumour_pixels, row.tumour_volume])
    return buffer.getvalue()


def _summarise_patient(
    folder: Path, patient: PatientSlices, spacing: Sequence[float] | None, overlays: bool
) -> PatientPrediction:
    predicted = _read_masks(folder, patient)
    pixels = int(predicted.sum())
    if overlays:
        count = _write_overlays(folder, patient, predicted)
        logger.info("Wrote %d overlays for %s", count, patient.patient)
    return PatientPrediction(
        patient=patient.patient,
        slices=len(patient.numbers),
        tumour_slices=int(predicted.any(axis=(1, 2)).sum()),
        tumour_pixels=pixels,
        tumour_volume=pixels * float(np.prod(spacing)) if spacing is not None else pixels,
        volume_unit="mm3" if spacing is not None else "voxels",
    )


def _restore_nifti_geometry(path: Path, affine: np.ndarray) -> None:
    """Give the predicted NIfTI mask the affine of the NIfTI input, so it lies over the input in a viewer."""
    mask = nib.load(path)
    data = np.asarray(mask.dataobj).astype(np.uint8)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    image = nib.Nifti1Image(data, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


# ---------------------------------------------------------------- command


def predict(
    data: str | os.PathLike,
    out: str | os.PathLike,
    overrides: dict[str, Any] | None = None,
    overlays: bool = True,
    bundle: str | os.PathLike | None = None,
) -> list[PatientPrediction]:
    """Predict tumour masks for every patient of ``data`` and write them, with overlays and a table, to ``out``.

    Args:
        data: a ``kaggle_3m`` folder, one patient folder, the Kaggle ``archive.zip`` or a
            NIfTI image volume ``(x, y, slices, 3)`` or ``(x, y, slices, 1, 3)`` of uint8 values.
            Masks in the input are optional and only drawn in the overlays.
        out: output folder. It must not be the input folder or lie inside it.
        overrides: config keys and values for ``configs/inference.json``, for example from
            :func:`pipeline.evaluate.model_overrides`.
        overlays: write the overlay PNGs.
        bundle: bundle folder (default: the one in this repository).

    Returns:
        One entry per patient, in patient id order, as written to ``predictions.csv``.

    Raises:
        UserError: the output folder contains files that an earlier run did not write, or an option is invalid.
        DatasetError: the input or checkpoint is invalid, or ``out`` lies inside the input.
    """
    source = Path(data)
    if not source.exists():
        raise UserError(f"Input not found: {source}. Give a kaggle_3m folder, a patient folder or a NIfTI volume.")
    check_output_outside(out, source)
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"Output path {folder} exists and is not a folder. Choose another output folder.")
    folder.mkdir(parents=True, exist_ok=True)
    own = _read_manifest(folder)

    values = dict(overrides or {})
    with _open_input(source) as found:
        _check_foreign_files(folder, _planned_files(found.patients, overlays), own)
        if found.nifti_spacing is not None and values.get("spacing") is None:
            values["spacing"] = list(found.nifti_spacing)
        spacing = values.get("spacing")

        # NOTE: a process killed during the run leaves its staging folder behind. No later run deletes
        # it, because it is not in a manifest.
        staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=folder))
        try:
            values.update({"dataset_dir": str(found.dataset_dir.resolve()), "output_dir": str(staging)})
            run_config(
                bundle or default_bundle_dir(), ["inference.json"], values,
                workflow_type="infer", save_config_to=staging / CONFIG_FILE,
            )

            rows = [_summarise_patient(staging, patient, spacing, overlays) for patient in found.patients]
            if found.nifti_affine is not None:
                for patient in found.patients:
                    _restore_nifti_geometry(staging / _nifti_mask_file(patient.patient), found.nifti_affine)
            atomic_write_text(staging / PREDICTIONS_FILE, _predictions_csv(rows))
            _replace_outputs(folder, staging, own, source.resolve())
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    logger.info("Predicted %d patients into %s", len(rows), folder)
    return rows


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``predict`` command to the ``python -m pipeline`` parser."""
    parser = subparsers.add_parser(
        "predict",
        help="segment new patients: TIFF and NIfTI masks, overlays and predictions.csv (runs configs/inference.json)",
        description=(
            "Predict tumour masks through the bundle's configs/inference.json. Writes <patient>/<patient>_<n>_mask.tif, "
            f"<patient>/<patient>_mask.nii.gz, overlay PNGs of the slices with tumour and {PREDICTIONS_FILE} to --out. "
            "A rerun into the same folder replaces the files of the previous run and nothing else."
        ),
    )
    parser.add_argument(
        "--data", required=True,
        help="a kaggle_3m folder, one patient folder, the Kaggle archive.zip, or a NIfTI image volume from "
             "'python -m pipeline convert'",
    )
    parser.add_argument(
        "--out", required=True,
        help="output folder, outside the input folder (for a file input: outside the folder that contains the file)",
    )
    parser.add_argument("--no-overlays", action="store_true", help="skip the overlay PNGs")
    add_model_arguments(parser, modes=PREDICT_MODES)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Predict for the ``predict`` command and print where the outputs are."""
    rows = predict(args.data, args.out, model_overrides(args), overlays=not args.no_overlays, bundle=args.bundle)
    out = Path(args.out)
    with_tumour = sum(1 for row in rows if row.tumour_pixels)
    print(f"Predicted {len(rows)} patients ({with_tumour} with tumour). Masks: {out}/<patient>/")
    print(f"Table: {out / PREDICTIONS_FILE}")
    if not args.no_overlays:
        print(f"Overlays: {out}/<patient>/{OVERLAY_FOLDER}/")
    return 0
