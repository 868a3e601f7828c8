"""Synthetic brain MRI data in the Kaggle LGG ``kaggle_3m`` layout, for tests and demos.

The generator writes the same tree as the public dataset of Buda et al. Each
``kaggle_3m/<patient>/<patient>_<n>.tif`` contains one axial slice as an uncompressed
uint8 RGB TIFF with the channels pre-contrast, FLAIR and post-contrast. The matching
``<patient>_<n>_mask.tif`` is a uint8 mask with the values 0 and 255, and
``kaggle_3m/data.csv`` has one clinical row per patient. Slice ``n`` runs from 1
(inferior) to the patient's slice count.

Each patient is an axial stack through a head with skull, scalp, grey and white
matter, lateral ventricles and one glioma. The tumour is bright on FLAIR, mildly dark
on pre-contrast and has a partially enhancing rim on post-contrast. It spans
consecutive slices, and the first and last slices of every patient are tumour-free.
Every pixel outside the head is 0.

Example:
    >>> import tempfile
    >>> from pipeline.synth import generate_dataset
    >>> root = generate_dataset(tempfile.mkdtemp(), patients=2, slices=(8, 10), size=64)
    >>> sorted(path.name for path in root.iterdir())
    ['TCGA_CS_S000_20001111', 'TCGA_DU_S001_19931218', 'data.csv']
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import tifffile
from scipy import ndimage

from pipeline.cli import UserError
from transforms.errors import DatasetError

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = [
    "CSV_COLUMNS",
    "MAX_PATIENTS",
    "MIN_SLICES",
    "SITE_CODES",
    "SyntheticPatient",
    "generate_dataset",
    "register",
    "run",
    "synthesize_patient",
]

logger = logging.getLogger(__name__)

# Tissue source sites of the TCGA-LGG patients in the Kaggle dataset. Patient i
# gets SITE_CODES[i % 5], so any 5 consecutive patients cover every site.
SITE_CODES = ("CS", "DU", "EZ", "FG", "HT")

# Header of the Kaggle ``data.csv``. ``Patient`` is the id without the date suffix.
CSV_COLUMNS = (
    "Patient",
    "RNASeqCluster",
    "MethylationCluster",
    "miRNACluster",
    "CNCluster",
    "RPPACluster",
    "OncosignCluster",
    "COCCluster",
    "histological_type",
    "neoplasm_histologic_grade",
    "tumor_tissue_site",
    "laterality",
    "tumor_location",
    "gender",
    "age_at_initial_pathologic",
    "race",
    "ethnicity",
    "death01",
)

# Inclusive ranges of the integer codes in the Kaggle data.csv. Synthetic rows draw
# each code uniformly from its range, so the codes carry no clinical meaning.
_CLINICAL_CODE_RANGES = {
    "RNASeqCluster": (1, 4),
    "MethylationCluster": (1, 5),
    "miRNACluster": (1, 4),
    "CNCluster": (1, 3),
    "RPPACluster": (1, 4),
    "OncosignCluster": (1, 3),
    "COCCluster": (1, 3),
    "histological_type": (1, 3),
    "neoplasm_histologic_grade": (1, 2),
    "tumor_tissue_site": (1, 1),
    "laterality": (1, 3),
    "tumor_location": (1, 6),
    "gender": (1, 2),
    "age_at_initial_pathologic": (20, 75),
    "race": (1, 3),
    "ethnicity": (1, 2),
    "death01": (0, 1),
}

# The 4-character patient id is "S" plus 3 digits, which allows 1000 patients.
MAX_PATIENTS = 1000

# A patient needs a tumour slice between a tumour-free first and last slice.
MIN_SLICES = 3

# Patient folder names: TCGA_<site>_<4-character id>_<acquisition date YYYYMMDD>.
_PATIENT_FOLDER = re.compile(r"^TCGA_[A-Z]{2}_[A-Z0-9]{4}_\d{8}$")

_FIRST_DATE = datetime.date(1983, 1, 1)
_LAST_DATE = datetime.date(2003, 12, 31)

# The Kaggle TIFFs use strips of about 8 KiB, which is 11 rows per strip for the
# 256x256 RGB slices and 32 rows for the masks.
_STRIP_BYTES = 8192

# Tissue labels of the label volume from which the images are rendered.
_BACKGROUND, _SCALP, _BONE, _CSF, _GREY, _WHITE, _TUMOUR, _ENHANCING = range(8)

# Mean intensity of each label in (pre-contrast, FLAIR, post-contrast), where 1.0 is
# _FULL_SCALE grey levels. Scalp fat is bright on pre-contrast T1, CSF is dark on FLAIR,
# and the tumour is bright on FLAIR and darker than white matter on pre-contrast.
_INTENSITY = np.array(
    [
        [0.00, 0.00, 0.00],  # background
        [0.72, 0.55, 0.70],  # scalp
        [0.06, 0.05, 0.08],  # bone
        [0.12, 0.06, 0.14],  # CSF
        [0.38, 0.45, 0.40],  # grey matter
        [0.52, 0.36, 0.54],  # white matter
        [0.36, 0.85, 0.40],  # tumour
        [0.36, 0.85, 0.88],  # tumour rim that enhances after contrast
    ],
    dtype=np.float32,
)

# Relative amplitude of the smooth texture on each label. Tumours are more
# heterogeneous than normal tissue.
_TEXTURE_AMPLITUDE = np.array([0.0, 0.08, 0.05, 0.05, 0.06, 0.05, 0.12, 0.12], dtype=np.float32)

_FULL_SCALE = 200.0
_NOISE_SIGMA = 0.015

# Normalized head radius (1.0 is the brain surface) at which each layer ends.
_CORTEX_OUTER = 0.97
_CSF_OUTER = 1.0
_BONE_OUTER = 1.05
_SCALP_OUTER = 1.13

# CLI option names, used in validation messages.
_OPTION_NAMES = {
    "patients": "--patients",
    "seed": "--seed",
    "min_slices": "--min-slices",
    "max_slices": "--max-slices",
    "size": "--size",
}
_PARAMETER_NAMES = {
    "patients": "patients",
    "seed": "seed",
    "min_slices": "slices[0]",
    "max_slices": "slices[1]",
    "size": "size",
}


@dataclass(frozen=True)
class SyntheticPatient:
    """One synthetic patient, ready to write in the Kaggle layout.

    Attributes:
        folder: folder and file name prefix, for example ``TCGA_CS_S000_19960909``.
        patient_id: id without the date, as in the ``Patient`` column of data.csv.
        image: uint8 array of shape (slices, size, size, 3) with the channels
            pre-contrast, FLAIR and post-contrast on the last axis. Index 0 is slice 1.
        mask: uint8 array of shape (slices, size, size) with values 0 and 255.
        clinical: values of one data.csv row, in the order of ``CSV_COLUMNS``.
    """

    folder: str
    patient_id: str
    image: NDArray[np.uint8]
    mask: NDArray[np.uint8]
    clinical: tuple[str, ...]


def synthesize_patient(
    seed: int, index: int, slices: tuple[int, int] = (20, 32), size: int = 256
) -> SyntheticPatient:
    """Draw one synthetic patient in memory.

    The result depends only on ``(seed, index, slices, size)``, so a patient stays the
    same when the number of generated patients changes.

    Args:
        seed: non-negative random seed.
        index: patient index from 0. It sets the site code and the patient id.
        slices: inclusive range of the slice count.
        size: image width and height in pixels.

    Returns:
        The patient's arrays, folder name and data.csv row.

    Raises:
        ValueError: if an argument is out of range.
    """
    # The patient count is not a parameter here, so the check gets a valid count of 1.
    problem = _find_invalid_setting(1, seed, slices[0], slices[1], size, _PARAMETER_NAMES)
    if problem is not None:
        raise ValueError(problem)
    if not 0 <= index < MAX_PATIENTS:
        raise ValueError(f"index must be from 0 to {MAX_PATIENTS - 1}, got {index}")

    rng = np.random.default_rng([seed, index])

    site = SITE_CODES[index % len(SITE_CODES)]
    patient_id = f"TCGA_{site}_S{index:03d}"
    day = int(rng.integers((_LAST_DATE - _FIRST_DATE).days + 1))
    date = _FIRST_DATE + datetime.timedelta(days=day)
    folder = f"{patient_id}_{date:%Y%m%d}"

    clinical = [patient_id]
    for column in CSV_COLUMNS[1:]:
        low, high = _CLINICAL_CODE_RANGES[column]
        clinical.append(str(int(rng.integers(low, high, endpoint=True))))

    slice_count = int(rng.integers(slices[0], slices[1], endpoint=True))
    labels = _draw_labels(rng, slice_count, size)
    image = _render(rng, labels)
    mask = np.where(labels >= _TUMOUR, 255, 0).astype(np.uint8)

    return SyntheticPatient(folder, patient_id, image, mask, tuple(clinical))


def generate_dataset(
    out_dir: str | PathLike[str],
    patients: int = 4,
    seed: int = 0,
    slices: tuple[int, int] = (20, 32),
    size: int = 256,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic dataset to ``out_dir/kaggle_3m`` in the Kaggle LGG layout.

    Every file is written to a temporary name in its folder and then renamed, so a
    reader never sees a partly written TIFF or data.csv. The same arguments give
    byte-identical files.

    Args:
        out_dir: folder that receives ``kaggle_3m``. It is created if missing.
        patients: number of patients, from 1 to ``MAX_PATIENTS``.
        seed: non-negative random seed.
        slices: inclusive range of the slice count per patient. The minimum is
            ``MIN_SLICES``.
        size: image width and height in pixels, a multiple of 16 and at least 32.
        overwrite: if True, delete the patient folders (``TCGA_*`` with a date
            suffix) that ``kaggle_3m`` already contains before writing. Other files
            stay, except data.csv, which is replaced.

    Returns:
        The ``kaggle_3m`` folder.

    Raises:
        ValueError: if an argument is out of range.
        DatasetError: if ``kaggle_3m`` already contains patient folders and
            ``overwrite`` is False, or if a folder cannot be created.
    """
    problem = _find_invalid_setting(patients, seed, slices[0], slices[1], size, _PARAMETER_NAMES)
    if problem is not None:
        raise ValueError(problem)

    root = Path(out_dir) / "kaggle_3m"
    _prepare_root(root, overwrite)
    logger.info("Writing a synthetic dataset to %s (patients: %d, seed: %d)", root, patients, seed)

    rows = []
    slice_total = 0
    tumour_total = 0
    for index in range(patients):
        patient = synthesize_patient(seed, index, slices, size)
        _write_patient(root, patient)
        rows.append(patient.clinical)

        has_tumour = patient.mask.any(axis=(1, 2))
        tumour_slices = np.flatnonzero(has_tumour) + 1
        logger.debug(
            "%s: %d slices, tumour on slices %d to %d",
            patient.folder,
            len(has_tumour),
            tumour_slices[0],
            tumour_slices[-1],
        )
        slice_total += len(has_tumour)
        tumour_total += int(has_tumour.sum())

    _write_csv(root / "data.csv", rows)
    logger.info(
        "Wrote %s (patients: %d, slices: %d, slices with tumour: %d)", root, patients, slice_total, tumour_total
    )
    return root


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``synth`` command to the ``python -m pipeline`` parser."""
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic dataset in the Kaggle kaggle_3m layout",
        description=(
            "Write synthetic brain MRI slices and tumour masks to DIR/kaggle_3m, in the layout of "
            "the Kaggle LGG dataset, with a data.csv. The same options give identical files."
        ),
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="output folder that receives DIR/kaggle_3m"
    )
    parser.add_argument(
        "--patients", type=int, default=4, metavar="N", help=f"number of patients, 1 to {MAX_PATIENTS} (default: 4)"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="non-negative random seed (default: 0)")
    parser.add_argument(
        "--min-slices",
        type=int,
        default=20,
        metavar="N",
        help=f"minimum number of slices per patient, at least {MIN_SLICES} (default: 20)",
    )
    parser.add_argument(
        "--max-slices", type=int, default=32, metavar="N", help="maximum number of slices per patient (default: 32)"
    )
    parser.add_argument(
        "--size",
        type=int,
        default=256,
        metavar="PIXELS",
        help="image width and height in pixels, a multiple of 16 and at least 32 (default: 256)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="delete the patient folders that DIR/kaggle_3m already contains"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate the dataset for the ``synth`` command and print where it is.

    Raises:
        UserError: if an option is out of range.
    """
    problem = _find_invalid_setting(
        args.patients, args.seed, args.min_slices, args.max_slices, args.size, _OPTION_NAMES
    )
    if problem is not None:
        raise UserError(problem)

    root = generate_dataset(
        args.out,
        patients=args.patients,
        seed=args.seed,
        slices=(args.min_slices, args.max_slices),
        size=args.size,
        overwrite=args.overwrite,
    )
    print(f"Synthetic dataset written to {root} (patients: {args.patients}, seed: {args.seed})")
    return 0


def _find_invalid_setting(
    patients: int, seed: int, min_slices: int, max_slices: int, size: int, names: Mapping[str, str]
) -> str | None:
    """Return a message for the first setting out of range, or None if all are valid.

    ``names`` maps each setting to the name that the message uses for it.
    """
    if not 1 <= patients <= MAX_PATIENTS:
        return f"{names['patients']} must be from 1 to {MAX_PATIENTS}, got {patients}"
    if seed < 0:
        return f"{names['seed']} must be 0 or more, got {seed}"
    if min_slices < MIN_SLICES:
        return (
            f"{names['min_slices']} must be at least {MIN_SLICES}, got {min_slices}, "
            "because each patient has a tumour between tumour-free first and last slices"
        )
    if max_slices < min_slices:
        return f"{names['max_slices']} must be at least {names['min_slices']} ({min_slices}), got {max_slices}"
    if size < 32 or size % 16 != 0:
        # A U-Net with four 2x2 poolings needs sides divisible by 16.
        return f"{names['size']} must be a multiple of 16 and at least 32, got {size}"
    return None


def _prepare_root(root: Path, overwrite: bool) -> None:
    """Create ``root``, or check that it contains no patient folders unless ``overwrite``."""
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{root} exists and is not a folder. Remove it or choose another output folder.")

    existing = []
    if root.is_dir():
        existing = sorted(entry for entry in root.iterdir() if entry.is_dir() and _PATIENT_FOLDER.match(entry.name))
    if existing and not overwrite:
        raise DatasetError(
            f"{root} already contains patient folders ({len(existing)}, first: {existing[0].name}). "
            "Pass overwrite=True (--overwrite on the command line) to replace them, or choose another output folder."
        )
    if existing:
        logger.warning("Deleting the patient folders in %s before writing (folders: %d)", root, len(existing))
        for folder in existing:
            shutil.rmtree(folder)

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DatasetError(f"Cannot create {root}: {error.strerror}. Choose another output folder.") from error


def _write_patient(root: Path, patient: SyntheticPatient) -> None:
    folder = root / patient.folder
    folder.mkdir()

    image_rows = max(1, -(-_STRIP_BYTES // (patient.image.shape[2] * 3)))
    mask_rows = max(1, -(-_STRIP_BYTES // patient.mask.shape[2]))
    for number in range(1, len(patient.image) + 1):
        image = patient.image[number - 1]
        mask = patient.mask[number - 1]
        _write_atomic(
            folder / f"{patient.folder}_{number}.tif",
            lambda handle, data=image: _write_tiff(handle, data, "rgb", image_rows),
        )
        _write_atomic(
            folder / f"{patient.folder}_{number}_mask.tif",
            lambda handle, data=mask: _write_tiff(handle, data, "minisblack", mask_rows),
        )


def _write_tiff(handle: BinaryIO, data: NDArray[np.uint8], photometric: str, rows_per_strip: int) -> None:
    # Without metadata and software, tifffile writes no ImageDescription or Software
    # tag, which the Kaggle files do not have either.
    # NOTE: unlike the Kaggle files, these have resolution tags and no SampleFormat tag
    # (tifffile 2026.3 skips it as an extra tag), and masks lack PlanarConfiguration.
    # The pixel data, shape, dtype and photometric interpretation read back the same.
    tifffile.imwrite(
        handle,
        data,
        photometric=photometric,
        planarconfig="contig",
        compression=None,
        rowsperstrip=rows_per_strip,
        metadata=None,
        software=False,
    )


def _write_csv(path: Path, rows: list[tuple[str, ...]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(rows)
    content = text.getvalue().encode("utf-8")
    _write_atomic(path, lambda handle: handle.write(content))


def _write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temporary file next to ``path``, then rename it to ``path``.

    The temporary name starts with a dot and ends in ``.tmp``, so ``*.tif`` globs skip it.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _smooth_noise(rng: np.random.Generator, slice_count: int, size: int) -> NDArray[np.float32]:
    """Draw a smooth random field of shape (slice_count, size, size) with zero mean and unit variance.

    White noise on a grid of one node per 8 pixels is interpolated with Gaussian
    weights, which is much faster than filtering full-size noise.
    """
    nodes = size // 8
    coarse = rng.standard_normal((slice_count, nodes, nodes), dtype=np.float32)
    coarse = ndimage.gaussian_filter1d(coarse, sigma=0.8, axis=0)

    pixel_positions = (np.arange(size, dtype=np.float32) + 0.5) / 8 - 0.5
    weights = np.exp(-0.5 * (pixel_positions[:, None] - np.arange(nodes, dtype=np.float32)) ** 2)
    weights /= weights.sum(axis=1, keepdims=True)
    # np.einsum without optimize= runs its own loops instead of BLAS. With a matmul here,
    # 2 OpenBLAS threads made generation 4 times slower on a busy 2-core machine.
    rows_interpolated = np.einsum("ij,njk->nik", weights, coarse)
    field = np.einsum("nik,kl->nil", rows_interpolated, np.ascontiguousarray(weights.T))

    field -= field.mean()
    field /= field.std() + 1e-6
    return field


def _draw_labels(rng: np.random.Generator, slice_count: int, size: int) -> NDArray[np.uint8]:
    """Draw a label volume of shape (slice_count, size, size): head anatomy and one tumour."""
    rows, columns = np.mgrid[0:size, 0:size].astype(np.float32)

    # Head pose. v runs along the anterior-posterior axis (image rows), u along
    # left-right (image columns), both in pixels from the head centre.
    centre_row = size / 2 + rng.uniform(-0.03, 0.03) * size
    centre_column = size / 2 + rng.uniform(-0.03, 0.03) * size
    angle = rng.uniform(-0.14, 0.14)
    v = (rows - centre_row) * np.cos(angle) + (columns - centre_column) * np.sin(angle)
    u = (columns - centre_column) * np.cos(angle) - (rows - centre_row) * np.sin(angle)

    # Every slice shows the same outline, scaled by the slice's profile. The profile
    # grows from the skull base, peaks below the middle of the stack and shrinks
    # towards the vertex. head_radius is 1.0 on the brain surface of a slice with
    # profile 1, so a pixel of slice z lies within normalized radius r when
    # head_radius < r * profile[z].
    brain_v = 0.36 * size
    brain_u = 0.29 * size * rng.uniform(0.92, 1.05)
    outline = np.ones_like(v)
    theta = np.arctan2(v, u)
    for harmonic in (2, 3, 4):
        outline += rng.uniform(0.0, 0.025) * np.cos(harmonic * theta + rng.uniform(0, 2 * np.pi))
    head_radius = np.sqrt((v / brain_v) ** 2 + (u / brain_u) ** 2) / outline

    position = (np.arange(slice_count, dtype=np.float32) + 0.5) / slice_count
    peak = rng.uniform(0.38, 0.48)
    width = rng.uniform(0.6, 0.7)
    profile = np.sqrt(np.clip(1.0 - ((position - peak) / width) ** 2, 0.1, None))
    scale = profile[:, None, None]

    # Layers from the scalp inwards. The grey-white boundary follows a smooth random
    # field, which gives the cortex an uneven, gyrus-like thickness.
    folding = _smooth_noise(rng, slice_count, size)
    labels = np.zeros((slice_count, size, size), dtype=np.uint8)
    labels[head_radius < _SCALP_OUTER * scale] = _SCALP
    labels[head_radius < _BONE_OUTER * scale] = _BONE
    labels[head_radius < _CSF_OUTER * scale] = _CSF
    labels[head_radius < _CORTEX_OUTER * scale] = _GREY
    labels[head_radius < (0.86 + 0.05 * folding) * scale] = _WHITE

    # Interhemispheric fissure: a thin CSF line on the midline, front and back.
    midline = np.abs(u) < 0.004 * size + 0.5
    fissure = midline & (np.abs(v) > 0.6 * brain_v * scale) & (head_radius < _CORTEX_OUTER * scale)
    labels[fissure] = _CSF

    # Lateral ventricles: two tilted ellipses beside the midline that appear only in
    # the middle of the stack. A ventricle covers the pixels where its normalized
    # radius is below the slice's ventricle scale, so it grows from nothing and
    # shrinks again.
    ventricle_peak = peak + rng.uniform(0.02, 0.1)
    ventricle_scale = np.clip(1.0 - ((position - ventricle_peak) / 0.2) ** 2, 0.0, None)[:, None, None]
    for side in (-1.0, 1.0):
        tilt = side * rng.uniform(0.05, 0.2)
        dv = v + 0.05 * brain_v
        du = u - side * 0.13 * brain_u
        along = (dv * np.cos(tilt) + du * np.sin(tilt)) / (0.34 * brain_v)
        across = (du * np.cos(tilt) - dv * np.sin(tilt)) / (0.1 * brain_u)
        labels[along**2 + across**2 < ventricle_scale**2] = _CSF

    _draw_tumour(rng, labels, v, u, head_radius, profile, (brain_v, brain_u))
    return labels


def _draw_tumour(
    rng: np.random.Generator,
    labels: NDArray[np.uint8],
    v: NDArray[np.float32],
    u: NDArray[np.float32],
    head_radius: NDArray[np.float32],
    profile: NDArray[np.float32],
    brain_axes: tuple[float, float],
) -> None:
    """Paint one tumour into ``labels`` in place, on consecutive slices away from both ends.

    ``v``, ``u``, ``head_radius`` and ``profile`` come from ``_draw_labels``.
    ``brain_axes`` contains the brain semi-axes in pixels along v and u at profile 1.
    """
    slice_count, size = labels.shape[0], labels.shape[1]

    # About a third to a half of the slices have tumour (300 of 732 in a 20-patient
    # sample of the Kaggle data), never the first or the last one.
    extent = int(np.clip(round(rng.uniform(0.3, 0.55) * slice_count), 1, slice_count - 2))
    first = int(rng.integers(1, slice_count - extent))
    tumour_slices = slice(first, first + extent)

    # Ellipsoid semi-axes: in pixels in-plane, in slices along z. The cross-section
    # scale is floored at 0.4 so that the end slices of the tumour are not empty.
    axis_major = max(3.0, rng.uniform(0.07, 0.13) * size)
    axis_minor = max(3.0, axis_major * rng.uniform(0.7, 1.0))
    centre_slice = first + (extent - 1) / 2
    dz = (np.arange(first, first + extent, dtype=np.float32) - centre_slice) / (extent / 2 + 0.5)
    cross_section = np.maximum(np.sqrt(1.0 - dz**2), 0.4)[:, None, None]

    # The centre lies in one hemisphere and inside the brain of every tumour slice.
    smallest = float(profile[tumour_slices].min())
    side = 1.0 if rng.random() < 0.5 else -1.0
    centre_u = side * rng.uniform(0.3, 0.5) * brain_axes[1] * smallest
    centre_v = rng.uniform(-0.35, 0.35) * brain_axes[0] * smallest
    tilt = rng.uniform(0, np.pi)
    dv = v - centre_v
    du = u - centre_u
    along = (dv * np.cos(tilt) + du * np.sin(tilt)) / axis_major
    across = (du * np.cos(tilt) - dv * np.sin(tilt)) / axis_minor
    distance = np.sqrt(along**2 + across**2)
    phi = np.arctan2(across, along)

    # Perturbed boundary: angular harmonics whose phase turns from slice to slice.
    # cos(a + b) is expanded so that the cosines are taken on 2D arrays only.
    boundary = np.ones((extent, size, size), dtype=np.float32)
    for harmonic in (2, 3, 4, 5):
        amplitude = rng.uniform(0.0, 0.06)
        angle = harmonic * phi + rng.uniform(0, 2 * np.pi)
        turn = (rng.uniform(-1.5, 1.5) * dz)[:, None, None]
        boundary += amplitude * (np.cos(angle) * np.cos(turn) - np.sin(angle) * np.sin(turn))
    relative = distance / (cross_section * boundary)
    inside_brain = head_radius < _CORTEX_OUTER * profile[tumour_slices, None, None]
    tumour = (relative < 1.0) & inside_brain

    # Post-contrast enhancement covers the outer part of the tumour in one sector only.
    sector_centre = rng.uniform(0, 2 * np.pi)
    sector_cosine = rng.uniform(-0.2, 0.4)
    enhancing = tumour & (relative > 0.72) & (np.cos(phi - sector_centre) > sector_cosine)

    block = labels[tumour_slices]
    block[tumour] = _TUMOUR
    block[enhancing] = _ENHANCING


def _render(rng: np.random.Generator, labels: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Render the label volume as uint8 images of shape (slices, size, size, 3)."""
    slice_count, size = labels.shape[0], labels.shape[1]

    # Per-channel gain, a smooth coil sensitivity (bias field) across the head and a
    # smooth tissue texture. The bias is applied before the blur, which barely
    # changes it because it varies slowly.
    gain = rng.uniform(0.85, 1.1, size=3).astype(np.float32) * _FULL_SCALE
    rows, columns = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    position = ((np.arange(slice_count, dtype=np.float32) + 0.5) / slice_count - 0.5)[:, None, None]
    bias = 1.0 + rng.uniform(-0.3, 0.3) * rows + rng.uniform(-0.3, 0.3) * columns
    bias = bias + rng.uniform(-0.15, 0.15) * position
    texture = _smooth_noise(rng, slice_count, size)
    modulation = (1.0 + _TEXTURE_AMPLITUDE[labels] * texture) * bias

    values = (_INTENSITY * gain)[labels]
    values *= modulation[..., None]

    # Partial-volume blur, in-plane only so that slices stay independent. The binomial
    # kernel [1, 2, 1] / 4 approximates a Gaussian with a standard deviation of 0.71 pixels.
    kernel = np.array([0.25, 0.5, 0.25], dtype=np.float32)
    values = ndimage.correlate1d(values, kernel, axis=1)
    values = ndimage.correlate1d(values, kernel, axis=2)

    noise = rng.standard_normal(values.shape, dtype=np.float32)
    noise *= _NOISE_SIGMA * gain
    values += noise

    values *= (labels != _BACKGROUND)[..., None]
    np.clip(values, 0, 255, out=values)
    return np.rint(values, out=values).astype(np.uint8)
