"""Read Kaggle LGG slice files from folders or from the Kaggle ``archive.zip`` in place.

A slice source is either a filesystem path or a zip member written as
``"<archive>.zip::<member>"``. The string form keeps datalists JSON-serialisable
and lets worker processes open the archive themselves.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import tifffile

from transforms.errors import DatasetError

__all__ = ["ZIP_SEPARATOR", "SliceName", "parse_slice_name", "read_tiff", "source_name", "zip_member"]

ZIP_SEPARATOR = "::"

# <patient>_<n>.tif or <patient>_<n>_mask.tif; the patient id itself contains underscores.
_SLICE_PATTERN = re.compile(r"^(?P<patient>.+)_(?P<number>\d+)(?P<mask>_mask)?\.tiff?$", re.IGNORECASE)


class SliceName:
    """Parsed parts of a Kaggle slice file name: patient id, slice number, image or mask."""

    __slots__ = ("patient", "number", "is_mask")

    def __init__(self, patient: str, number: int, is_mask: bool) -> None:
        self.patient = patient
        self.number = number
        self.is_mask = is_mask

    def __repr__(self) -> str:
        kind = "mask" if self.is_mask else "image"
        return f"SliceName(patient={self.patient!r}, number={self.number}, {kind})"


def parse_slice_name(name: str) -> SliceName | None:
    """Parse ``<patient>_<n>.tif`` or ``<patient>_<n>_mask.tif``; return None for other names."""
    match = _SLICE_PATTERN.match(name)
    if match is None:
        return None
    return SliceName(match["patient"], int(match["number"]), match["mask"] is not None)


def zip_member(archive: str | os.PathLike, member: str) -> str:
    """Return the source string for ``member`` inside the zip file ``archive``."""
    return f"{os.fspath(archive)}{ZIP_SEPARATOR}{member}"


def source_name(source: str | os.PathLike) -> str:
    """Return the file name of a slice source (the last path component of a zip member too)."""
    text = os.fspath(source)
    if ZIP_SEPARATOR in text:
        text = text.split(ZIP_SEPARATOR, 1)[1]
    return text.replace("\\", "/").rsplit("/", 1)[-1]


@lru_cache(maxsize=4)
def _open_archive(path: str, pid: int) -> zipfile.ZipFile:
    # Keyed by process id: a ZipFile handle must not be shared with forked workers.
    return zipfile.ZipFile(path)


def _read_bytes(source: str) -> bytes:
    archive, member = source.split(ZIP_SEPARATOR, 1)
    try:
        return _open_archive(archive, os.getpid()).read(member)
    except FileNotFoundError:
        raise DatasetError(f"Zip archive not found: {archive}. Check the path.") from None
    except KeyError:
        raise DatasetError(f"No member {member!r} in {archive}. Rediscover the dataset.") from None
    except zipfile.BadZipFile as error:
        raise DatasetError(f"{archive} is not a readable zip file ({error}). Download it again.") from None


def read_tiff(source: str | os.PathLike) -> np.ndarray:
    """Read one TIFF slice from a path or zip member into a numpy array.

    Raises:
        DatasetError: the file is missing, truncated or not a TIFF file.
    """
    text = os.fspath(source)
    # By default, tifffile 2026.3 starts a pool of 2 threads per call to decode a page
    # of 4 or more uncompressed strips that are not stored back to back, as in the
    # Kaggle images. Reading the dataset that way took about 3 times the CPU time of
    # one thread, and data loader workers read files in parallel anyway.
    try:
        if ZIP_SEPARATOR in text:
            array = tifffile.imread(io.BytesIO(_read_bytes(text)), maxworkers=1)
        else:
            array = tifffile.imread(text, maxworkers=1)
    except FileNotFoundError:
        raise DatasetError(f"File not found: {text}. Check the path or rediscover the dataset.") from None
    except DatasetError:
        raise
    except (tifffile.TiffFileError, ValueError, OSError, EOFError, IndexError, struct.error) as error:
        raise DatasetError(
            f"Cannot read {text} as a TIFF image ({type(error).__name__}: {error}). "
            "The file is truncated or not a TIFF file; replace it with the original from the dataset."
        ) from None

    # A file cut off right after the 8-byte header has no image pages, and tifffile
    # returns an empty array for it instead of raising.
    if array.size == 0:
        raise DatasetError(
            f"Cannot read {text} as a TIFF image: it contains no image data. "
            "The file is truncated; replace it with the original from the dataset."
        )
    return array


def is_zip_source(source: str | os.PathLike) -> bool:
    return ZIP_SEPARATOR in os.fspath(source)


def parent_name(source: str | os.PathLike) -> str:
    """Return the name of the folder that contains a slice source."""
    text = os.fspath(source)
    if ZIP_SEPARATOR in text:
        text = text.split(ZIP_SEPARATOR, 1)[1]
    return Path(text.replace("\\", "/")).parent.name
