"""Convert Kaggle LGG patients from TIFF slices to 3D NIfTI or NRRD volumes for 3D Slicer and ITK-SNAP.

Each patient becomes two files in the output folder: ``<patient>_image.nii.gz`` and
``<patient>_mask.nii.gz`` (NIfTI-1, written with nibabel), or ``<patient>_image.nrrd``
and ``<patient>_mask.nrrd`` (NRRD, written with ITK). The image keeps the uint8
values of the TIFF files, and the mask is uint8 with 0 = background and 1 = tumour.

Axes: file voxel ``(i, j, k)`` contains ``tiff_n[row=j, column=i]`` with ``n = k + 1``.
So ``i`` runs along a TIFF row (left to right), ``j`` down the TIFF columns (top to
bottom) and ``k`` over the slice number. This is the axis order of
:class:`transforms.io.LoadPatientSlices` without its channel axis.
For the mask, nibabel's ``dataobj[i, j, k]`` and ITK's ``GetArrayFromImage(mask)[k, j, i]``
index the same voxel. The image adds the component ``c`` last: ``[i, j, k, 0, c]``
in NIfTI and ``[k, j, i, c]`` in the ITK array.

Geometry: the NIfTI qform and sform contain the RAS affine ``diag(-sx, -sy, sz)`` of
:func:`transforms.io.slice_affine`. The NRRD files are in LPS, as ITK writes them,
with identity direction, the same spacing and origin 0. Both describe one
physical layout: ``i`` increases towards the patient's left, ``j`` towards
posterior and ``k`` towards superior, so a viewer shows slices as the TIFF files
look (radiological convention). The dataset records neither the voxel spacing nor
the direction of the slice axis. Without ``spacing`` the files state 1 mm per voxel.

Image channels: the image file is one 3D volume with a vector of 3 components per
voxel (pre-contrast, FLAIR, post-contrast). It therefore has the geometry of the
mask, and the mask lies over it in a viewer. NIfTI stores such vectors in its
fifth dimension: shape ``(x, y, z, 1, 3)`` with intent ``NIFTI_INTENT_VECTOR``.
ITK 5.4 reads this as a 3D image with 3 components per voxel, as it reads the NRRD
file (``kinds: vector domain domain domain``). A 4D array ``(x, y, z, 3)`` would
be a time series of 3 volumes instead, which 3D Slicer opens as a sequence and
not as one multi-channel volume. In ITK Python, read the image with
``itk.imread(path, pixel_type=itk.VariableLengthVector[itk.UC])``, because ITK
Python 5.4 wraps no ``itk.Image`` type for a 3-component uint8 vector pixel.

NOTE: the vector layout was checked by reading files back with ITK 5.4 and nibabel.
Opening the files in 3D Slicer and ITK-SNAP themselves is not part of the tests.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from pipeline.cli import UserError
from pipeline.discovery import discover
from pipeline.io_utils import atomic_write_bytes, check_output_outside
from transforms.errors import DatasetError
from transforms.io import CHANNEL_NAMES, LoadPatientSlicesd, slice_affine
from transforms.slices import PatientSlices

__all__ = ["FORMATS", "convert_dataset", "output_names", "register", "run"]

logger = logging.getLogger(__name__)

# File name suffix of each output format.
FORMATS = {"nifti": ".nii.gz", "nrrd": ".nrrd"}

_CHANNEL_TEXT = ", ".join(CHANNEL_NAMES)


def output_names(patient: str, fmt: str) -> tuple[str, str]:
    """Return the image and mask file names of ``patient`` in format ``fmt``."""
    suffix = FORMATS[fmt]
    return f"{patient}_image{suffix}", f"{patient}_mask{suffix}"


def _count_patients(number: int) -> str:
    return "1 patient" if number == 1 else f"{number} patients"


def _check_settings(fmt: str, spacing: Sequence[float] | None, on_error: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    if spacing is not None and (len(spacing) != 3 or any(not float(s) > 0 for s in spacing)):
        raise ValueError(f"spacing must be three positive numbers (x, y, slice) in mm, got {spacing!r}.")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")


def _nifti_bytes(data: np.ndarray, affine: np.ndarray, intent: str, description: str) -> bytes:
    """Serialise a NIfTI-1 image as gzip bytes, with the same affine in qform and sform."""
    image = nib.Nifti1Image(data, affine)
    header = image.header
    header.set_intent(intent)
    header.set_xyzt_units("mm")
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header["descrip"] = description.encode("ascii")[:79]

    # mtime=0 keeps the gzip header free of a time stamp, so equal input gives equal files.
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def _write_nifti(
    folder: Path, names: tuple[str, str], image: np.ndarray, mask: np.ndarray, spacing: Sequence[float] | None
) -> list[Path]:
    affine = slice_affine(spacing)

    # (channel, x, y, z) -> (x, y, z, 1, channel): NIfTI keeps vector components in dim 5.
    vector = np.moveaxis(image, 0, -1)[:, :, :, np.newaxis, :]
    image_path = atomic_write_bytes(
        folder / names[0], _nifti_bytes(vector, affine, "vector", f"channels: {_CHANNEL_TEXT}")
    )
    mask_path = atomic_write_bytes(
        folder / names[1], _nifti_bytes(mask, affine, "label", "tumour mask: 0 background, 1 tumour")
    )
    return [image_path, mask_path]


def _itk_write_atomic(image: itk.Image, path: Path) -> Path:
    """Write ``image`` with ITK, gzip-compressed, to a temporary file beside ``path``, then rename it.

    ITK picks the file format from the name, so the temporary name ends in ``.nrrd`` too.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp.nrrd")
    try:
        itk.imwrite(image, str(temporary), compression=True)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def _write_nrrd(
    folder: Path, names: tuple[str, str], image: np.ndarray, mask: np.ndarray, spacing: Sequence[float] | None
) -> list[Path]:
    itk_spacing = [1.0, 1.0, 1.0] if spacing is None else [float(s) for s in spacing]

    # ITK arrays are indexed [k, j, i(, component)], the reverse of the file axes.
    vector = itk.image_from_array(
        np.ascontiguousarray(image.transpose(3, 2, 1, 0)), ttype=itk.VectorImage[itk.UC, 3]
    )
    labels = itk.image_from_array(np.ascontiguousarray(mask.transpose(2, 1, 0)))
    for volume in (vector, labels):
        volume.SetSpacing(itk_spacing)
        volume.SetOrigin([0.0, 0.0, 0.0])
    vector["channel_names"] = _CHANNEL_TEXT

    return [_itk_write_atomic(vector, folder / names[0]), _itk_write_atomic(labels, folder / names[1])]


def _convert_patient(patient: PatientSlices, folder: Path, fmt: str, spacing: Sequence[float] | None) -> list[Path]:
    """Load one patient's slices and write its image and mask volumes."""
    loader = LoadPatientSlicesd(keys=("image", "label"), spacing=spacing, dtype=np.uint8, slice_meta=False)
    volumes = loader({"image": patient, "label": patient})
    image = volumes["image"].numpy()
    mask = volumes["label"].numpy()[0]

    names = output_names(patient.patient, fmt)
    if fmt == "nifti":
        return _write_nifti(folder, names, image, mask, spacing)
    return _write_nrrd(folder, names, image, mask, spacing)


def _convert(
    data: str | os.PathLike, out: str | os.PathLike, fmt: str, spacing: Sequence[float] | None, on_error: str
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Convert every patient and return the written files and the ``(patient, reason)`` pairs skipped."""
    _check_settings(fmt, spacing, on_error)
    check_output_outside(out, data)
    found = discover(data, on_error=on_error, require_masks=True)

    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise DatasetError(f"Output path {folder} exists and is not a folder. Choose another output folder.")
    folder.mkdir(parents=True, exist_ok=True)

    written: list[Path] = []
    skipped = list(found.skipped)
    with logging_redirect_tqdm():
        for patient in tqdm(found.patients, desc=f"convert to {fmt}", unit="patient", disable=None):
            try:
                written.extend(_convert_patient(patient, folder, fmt, spacing))
            except DatasetError as error:
                if on_error == "raise":
                    raise
                logger.warning("Skipping patient %s: %s", patient.patient, error)
                skipped.append((patient.patient, str(error)))

    if not written:
        first = f" First reason: {skipped[0][1]}" if skipped else ""
        raise DatasetError(
            f"No patient under {data} was converted because all {len(skipped)} were skipped.{first} "
            "Fix or remove the invalid patients."
        )
    logger.info("Wrote %d files for %d patients to %s", len(written), len(written) // 2, folder)
    return written, skipped


def convert_dataset(
    data: str | os.PathLike,
    out: str | os.PathLike,
    fmt: str,
    spacing: Sequence[float] | None = None,
    on_error: str = "raise",
) -> list[Path]:
    """Convert every patient under ``data`` to an image and a mask volume in ``out``.

    Args:
        data: a ``kaggle_3m`` folder, a folder above it, or the Kaggle ``archive.zip``.
        out: output folder, created if missing. It must not be ``data`` or lie inside it.
        fmt: ``"nifti"`` (``.nii.gz``) or ``"nrrd"`` (``.nrrd``).
        spacing: voxel spacing ``(x, y, slice)`` in mm; default 1 mm each.
        on_error: ``"raise"`` stops at the first invalid patient, ``"skip"`` logs a
            warning and leaves the patient out.

    Returns:
        The written files, image then mask for each patient, in patient id order.

    Raises:
        DatasetError: ``data`` is missing or invalid, ``out`` is inside the input,
            a patient is invalid (with ``on_error="raise"``), or no patient could be converted.
        ValueError: ``fmt``, ``spacing`` or ``on_error`` is invalid.
    """
    written, skipped = _convert(data, out, fmt, spacing, on_error)
    if skipped:
        logger.warning("Patients skipped (%d): %s", len(skipped), ", ".join(name for name, _ in skipped))
    return written


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``convert`` command to the ``python -m pipeline`` parser."""
    parser = subparsers.add_parser(
        "convert",
        help="convert TIFF slices to NIfTI or NRRD volumes for 3D Slicer and ITK-SNAP",
        description=(
            "Write one image volume (3 components: pre-contrast, FLAIR, post-contrast) and one mask "
            "volume (0/1) per patient, with matching geometry, so that the mask lies over the image "
            "in 3D Slicer and ITK-SNAP."
        ),
    )
    parser.add_argument(
        "--data", required=True, type=Path, metavar="PATH",
        help="kaggle_3m folder, a folder above it, or the Kaggle archive.zip",
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="output folder, which must not lie inside the input"
    )
    parser.add_argument(
        "--format", required=True, choices=sorted(FORMATS), dest="fmt",
        help="nifti writes .nii.gz files with nibabel, nrrd writes .nrrd files with ITK",
    )
    parser.add_argument(
        "--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
        help="voxel spacing in mm along the TIFF row, the TIFF column and the slice axis (default: 1 1 1)",
    )
    parser.add_argument(
        "--on-error", choices=("raise", "skip"), default="raise",
        help="raise stops at the first invalid patient, skip leaves it out with a warning (default: raise)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert the dataset for the ``convert`` command and print what was written and skipped.

    Raises:
        UserError: ``--spacing`` has a value that is not positive.
    """
    if args.spacing is not None and any(not s > 0 for s in args.spacing):
        raise UserError(f"--spacing needs three positive values in mm, got {' '.join(map(str, args.spacing))}.")

    written, skipped = _convert(args.data, args.out, args.fmt, args.spacing, args.on_error)
    print(f"Converted {_count_patients(len(written) // 2)} to {args.fmt} in {args.out}")
    if skipped:
        print(f"Skipped {_count_patients(len(skipped))}:")
        for name, reason in skipped:
            print(f"  {name}: {reason}")
    return 0
