"""List and pair the image and mask slices of one patient in the Kaggle LGG layout.

A patient folder contains ``<patient>_<n>.tif`` (RGB image) and ``<patient>_<n>_mask.tif``
(mask) for ``n = 1 .. N`` without gaps. Slices are ordered by the number ``n``,
never by string sort, so ``_10`` comes after ``_9``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transforms.errors import DatasetError
from transforms.sources import parse_slice_name, source_name

__all__ = ["PatientSlices", "is_ignored_name", "list_patient_folder", "pair_slices"]

# Files that operating systems and archivers leave beside data; never treated as slices.
_IGNORED_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}


def is_ignored_name(name: str) -> bool:
    """Return True for hidden files and operating-system clutter such as ``.DS_Store`` or ``._x.tif``."""
    return name in _IGNORED_NAMES or name.startswith(".") or name.startswith("~$")


@dataclass
class PatientSlices:
    """The ordered slices of one patient.

    Attributes:
        patient: patient id, the folder name (for example ``TCGA_CS_4941_19960909``).
        images: image slice sources ordered by slice number.
        masks: mask slice sources in the same order, or an empty list when the
            patient has no masks (inference input).
        numbers: slice numbers, ``1 .. N``.
    """

    patient: str
    images: list[str]
    masks: list[str] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)

    @property
    def num_slices(self) -> int:
        return len(self.images or self.masks)


def pair_slices(
    sources: Iterable[str | os.PathLike], where: str, require_masks: bool = True, require_images: bool = True
) -> PatientSlices:
    """Pair image and mask slice files of one patient and check their numbering.

    Args:
        sources: the slice files (paths or zip members) of one patient, in any order.
            Hidden files and files that are not TIFF are skipped.
        where: the folder the files come from, used in error messages.
        require_masks: if True, every image needs its mask. If False, masks are
            optional, but when present they must match the images one to one.
        require_images: if False, a list of mask files alone is accepted.

    Raises:
        DatasetError: a TIFF name does not parse, several patient ids are mixed,
            an image has no mask or a mask no image, or slice numbers have a gap
            or a duplicate.
    """
    images: dict[int, str] = {}
    masks: dict[int, str] = {}
    patients: set[str] = set()

    for source in sources:
        text = os.fspath(source)
        name = source_name(text)
        if is_ignored_name(name) or not name.lower().endswith((".tif", ".tiff")):
            continue
        parsed = parse_slice_name(name)
        if parsed is None:
            raise DatasetError(
                f"Cannot parse the slice file name {text!r}: expected <patient>_<n>.tif or "
                "<patient>_<n>_mask.tif with a whole number n. Rename or remove the file."
            )
        patients.add(parsed.patient)
        if len(patients) > 1:
            raise DatasetError(
                f"{where} mixes slices of several patients: {', '.join(sorted(patients))} ({text!r}). "
                "Keep one patient per folder."
            )
        target = masks if parsed.is_mask else images
        if parsed.number in target:
            raise DatasetError(
                f"Duplicate slice number {parsed.number} in {where}: {target[parsed.number]!r} and {text!r}. "
                "Remove one of them."
            )
        target[parsed.number] = text

    if not images and not masks:
        raise DatasetError(f"No slice files (<patient>_<n>.tif) found in {where}. Check the path.")
    if len(patients) > 1:
        raise DatasetError(
            f"{where} mixes slices of several patients: {', '.join(sorted(patients))}. "
            "Keep one patient per folder."
        )
    patient = patients.pop()

    for number in sorted(set(images) - set(masks)):
        if require_masks or masks:
            raise DatasetError(
                f"Image {images[number]!r} has no mask: expected {patient}_{number}_mask.tif beside it. "
                "Add the mask, or remove the image."
            )
    for number in sorted(set(masks) - set(images)):
        if not require_images and not images:
            break
        raise DatasetError(
            f"Mask {masks[number]!r} has no image: expected {patient}_{number}.tif beside it. "
            "Add the image, or remove the mask."
        )

    numbers = sorted(images or masks)
    expected = list(range(1, len(numbers) + 1))
    if numbers != expected:
        missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
        raise DatasetError(
            f"Slice numbers of {patient} in {where} have a gap: missing {_format_numbers(missing)} "
            f"(found {len(numbers)} slices numbered up to {numbers[-1]}). Restore the missing slices."
        )
    return PatientSlices(
        patient=patient,
        images=[images[n] for n in numbers] if images else [],
        masks=[masks[n] for n in numbers] if masks else [],
        numbers=numbers,
    )


def list_patient_folder(folder: str | os.PathLike, require_masks: bool = True) -> PatientSlices:
    """List and pair the slices in one patient folder on disk.

    Raises:
        DatasetError: the folder does not exist, or its slices are invalid (see :func:`pair_slices`).
    """
    path = Path(folder)
    if not path.exists():
        raise DatasetError(f"Patient folder not found: {path}. Check the path.")
    if not path.is_dir():
        raise DatasetError(f"{path} is not a folder. Give the folder that contains one patient's slices.")
    with os.scandir(path) as entries:
        files = [entry.path for entry in entries if entry.is_file()]
    return pair_slices(files, where=str(path), require_masks=require_masks)


def _format_numbers(numbers: Sequence[int], limit: int = 10) -> str:
    listed = ", ".join(str(n) for n in numbers[:limit])
    return listed + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")
