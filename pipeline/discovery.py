"""Find the patients of a Kaggle LGG dataset in a folder tree or in the Kaggle ``archive.zip``.

The Kaggle download contains the tree twice (``kaggle_3m/`` and
``lgg-mri-segmentation/kaggle_3m/``). Each patient counts once; the same patient id
with different content is an error. macOS and Windows clutter is ignored.
"""

from __future__ import annotations

import filecmp
import logging
import os
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from transforms.errors import DatasetError
from transforms.slices import PatientSlices, is_ignored_name, pair_slices
from transforms.sources import zip_member

__all__ = ["Discovery", "discover", "discover_patients"]

logger = logging.getLogger(__name__)

_IGNORED_FOLDERS = {"__MACOSX", ".git", ".ipynb_checkpoints"}
_TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class Discovery:
    """Patients found under one dataset path.

    Attributes:
        root: the path that was searched.
        patients: one entry per patient, sorted by patient id.
        skipped: ``(patient folder, reason)`` for each patient skipped with ``on_error="skip"``.
    """

    root: str
    patients: list[PatientSlices] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def by_id(self) -> dict[str, PatientSlices]:
        return {p.patient: p for p in self.patients}


def _is_tiff(name: str) -> bool:
    return name.lower().endswith(_TIFF_SUFFIXES) and not is_ignored_name(name)


def _folder_groups(root: Path) -> dict[str, list[list[str]]]:
    """Map each folder name that contains TIFF files to the file lists of every folder of that name."""
    groups: dict[str, list[list[str]]] = defaultdict(list)
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(s for s in subfolders if s not in _IGNORED_FOLDERS and not s.startswith("."))
        tiffs = [os.path.join(folder, f) for f in files if _is_tiff(f)]
        if tiffs:
            groups[os.path.basename(folder)].append(tiffs)
    return groups


def _same_folder_content(first: list[str], second: list[str]) -> bool:
    names_first = {os.path.basename(p): p for p in first}
    names_second = {os.path.basename(p): p for p in second}
    if names_first.keys() != names_second.keys():
        return False
    return all(filecmp.cmp(names_first[n], names_second[n], shallow=False) for n in names_first)


def _zip_groups(archive: Path) -> dict[str, list[list[str]]]:
    """Map each patient folder name inside a zip file to the member lists of every copy."""
    try:
        with zipfile.ZipFile(archive) as handle:
            infos = handle.infolist()
    except zipfile.BadZipFile as error:
        raise DatasetError(f"{archive} is not a readable zip file ({error}). Download it again.") from None

    folders: dict[str, dict[str, list[zipfile.ZipInfo]]] = defaultdict(lambda: defaultdict(list))
    for info in infos:
        name = info.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        if name.startswith("/") or (parts and (parts[0].endswith(":") or ".." in parts)):
            raise DatasetError(
                f"{archive} contains the unsafe member path {info.filename!r} (absolute or climbing out with '..'). "
                "Use the original Kaggle download."
            )
        if info.is_dir() or not parts or any(p in _IGNORED_FOLDERS for p in parts) or not _is_tiff(parts[-1]):
            continue
        parent = "/".join(parts[:-1])
        folders[parts[-2] if len(parts) > 1 else ""][parent].append(info)

    groups: dict[str, list[list[str]]] = defaultdict(list)
    for patient, copies in folders.items():
        signatures = {parent: sorted((PurePosixPath(i.filename).name, i.CRC, i.file_size) for i in members)
                      for parent, members in copies.items()}
        parents = sorted(copies, key=lambda p: (p.count("/"), p))
        for parent in parents[1:]:
            if signatures[parent] != signatures[parents[0]]:
                raise DatasetError(
                    f"Patient {patient} appears twice in {archive} with different content "
                    f"({parents[0]}/ and {parent}/). Remove one copy."
                )
        groups[patient].append([zip_member(archive, i.filename) for i in copies[parents[0]]])
    return groups


def discover(path: str | os.PathLike, on_error: str = "raise", require_masks: bool = True) -> Discovery:
    """Find every patient under ``path``.

    Args:
        path: a ``kaggle_3m`` folder, any folder above it, one patient folder, or the
            Kaggle ``archive.zip`` (read in place).
        on_error: ``"raise"`` stops at the first invalid patient; ``"skip"`` logs a
            warning, leaves the patient out and records it in ``Discovery.skipped``.
        require_masks: every image needs its mask (training and evaluation). Set
            False for inference input without masks.

    Raises:
        DatasetError: the path does not exist, contains no patients, a patient's files
            are invalid (with ``on_error="raise"``), or a patient id appears twice
            with different content.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError(f"Dataset path not found: {root}. Give the kaggle_3m folder or the Kaggle archive.zip.")

    if root.is_file():
        if not zipfile.is_zipfile(root):
            raise DatasetError(f"{root} is a file but not a zip archive. Give the kaggle_3m folder or archive.zip.")
        groups = _zip_groups(root)
    else:
        groups = _folder_groups(root)
        for patient, copies in groups.items():
            for other in copies[1:]:
                if not _same_folder_content(copies[0], other):
                    raise DatasetError(
                        f"Patient {patient} appears twice under {root} with different content "
                        f"({os.path.dirname(copies[0][0])} and {os.path.dirname(other[0])}). Remove one copy."
                    )

    result = Discovery(root=str(root))
    for folder_name, copies in sorted(groups.items()):
        files = copies[0]
        where = os.path.dirname(files[0]) if files else folder_name
        try:
            patient = pair_slices(files, where=where, require_masks=require_masks)
        except DatasetError as error:
            if on_error == "raise":
                raise
            logger.warning("Skipping patient %s: %s", folder_name, error)
            result.skipped.append((folder_name, str(error)))
            continue
        if len(copies) > 1:
            logger.debug("Patient %s found %d times with identical content; counted once.", patient.patient, len(copies))
        result.patients.append(patient)

    if not result.patients and not result.skipped:
        raise DatasetError(
            f"No patients found under {root}: expected folders of <patient>_<n>.tif slices. "
            "Give the kaggle_3m folder or the Kaggle archive.zip."
        )
    logger.info(
        "Found %d patients with %d slices under %s",
        len(result.patients), sum(p.num_slices for p in result.patients), root,
    )
    return result


def discover_patients(path: str | os.PathLike, require_masks: bool = True) -> list[PatientSlices]:
    """Return the patients under ``path``, raising on the first invalid one (see :func:`discover`)."""
    return discover(path, on_error="raise", require_masks=require_masks).patients
