"""Load a patient's Kaggle LGG TIFF slices into one volume, and write masks back to slices.

Axis convention (the same as MONAI's 2D image readers): a TIFF slice read by
``tifffile`` is an array ``tiff[row, column, channel]``; the volume is channel-first
``volume[channel, column, row, slice]``, so spatial axis 0 runs along a TIFF row
(left to right), axis 1 down the TIFF columns (top to bottom) and axis 2 over the
slice number ``n = 1 .. N``. In short ``volume[:, x, y, n - 1] == tiff_n[y, x, :]``.

The affine maps these axes to RAS world coordinates as ``diag(-sx, -sy, sz)``: x
increases towards the patient's left and y towards posterior, which is how axial
MRI slices are usually displayed. The dataset does not record voxel spacing or the
direction of the slice axis; without a given spacing, the affine uses 1 per voxel.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from transforms.errors import DatasetError
from transforms.slices import PatientSlices, list_patient_folder, pair_slices
from transforms.sources import is_zip_source, read_tiff

__all__ = [
    "CHANNEL_NAMES",
    "LoadPatientSlices",
    "LoadPatientSlicesd",
    "SaveSliceMasks",
    "SaveSliceMasksd",
    "slice_affine",
]

logger = logging.getLogger(__name__)

CHANNEL_NAMES = ("pre-contrast", "FLAIR", "post-contrast")
_MASK_VALUES = (0, 1, 255)


def slice_affine(spacing: Sequence[float] | None = None) -> np.ndarray:
    """Return the 4x4 RAS affine of a volume in this module's axis convention."""
    sx, sy, sz = (1.0, 1.0, 1.0) if spacing is None else (float(s) for s in spacing)
    return np.diag([-sx, -sy, sz, 1.0])


def _resolve_slices(slices: Any, kind: str) -> PatientSlices:
    """Turn a patient folder or a list of slice files into ordered slice sources."""
    if isinstance(slices, PatientSlices):
        return slices
    if isinstance(slices, (str, os.PathLike)) and not is_zip_source(slices):
        return list_patient_folder(slices, require_masks=(kind == "label"))
    if isinstance(slices, (str, os.PathLike)):
        raise DatasetError(f"{os.fspath(slices)} is a single zip member; give the list of a patient's slice files.")
    if isinstance(slices, Sequence) and slices:
        where = os.path.dirname(os.fspath(slices[0])) or "."
        return pair_slices(slices, where=where, require_masks=False, require_images=(kind == "image"))
    raise DatasetError(f"Expected a patient folder or a list of slice files, got {slices!r}.")


def _check_image(array: np.ndarray, source: str) -> None:
    if array.ndim == 2:
        raise DatasetError(
            f"{source} is a greyscale image of shape {array.shape}, but an RGB slice "
            f"({', '.join(CHANNEL_NAMES)}) is expected. Use the original three-channel file."
        )
    if array.ndim != 3 or array.shape[-1] != 3:
        raise DatasetError(
            f"{source} has shape {array.shape}; expected height x width x 3 channels "
            f"({', '.join(CHANNEL_NAMES)}). Use the original three-channel file."
        )
    if array.dtype != np.uint8:
        raise DatasetError(f"{source} has pixel type {array.dtype}; expected uint8. Use the original 8-bit file.")


def _check_mask(array: np.ndarray, source: str) -> None:
    if array.ndim != 2:
        raise DatasetError(f"{source} has shape {array.shape}; a mask must be a single-channel height x width image.")
    if array.dtype not in (np.uint8, np.bool_):
        raise DatasetError(f"{source} has pixel type {array.dtype}; a mask must be uint8 with values 0 and 255.")
    invalid = (array != 0) & (array != 1) & (array != 255)
    if invalid.any():
        values = np.unique(array[invalid])[:5].tolist()
        raise DatasetError(
            f"{source} has mask values {values}; only 0, 1 and 255 are allowed. "
            "Binarise the mask (0 = background, 255 = tumour)."
        )


def _move_slices_last(stack: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Return a ``(slice, C, x, y)`` stack as a C-contiguous ``(C, x, y, slice)`` array of ``dtype``."""
    count = stack.shape[0]
    # Transposing in uint8 first lets the conversion write the larger output in memory
    # order. Converting during the transpose took up to 4 times as long on newly
    # allocated memory (2-core Xeon virtual machine, 20 real patients).
    moved = np.ascontiguousarray(stack.reshape(count, -1).T)
    return moved.reshape(*stack.shape[1:], count).astype(dtype, copy=False)


class LoadPatientSlices(Transform):
    """Load a patient's image or mask slices into one channel-first volume.

    The input is a patient folder or a list of slice files (paths, or zip members
    written as ``"archive.zip::member"``). An image volume has 3 channels
    (pre-contrast, FLAIR, post-contrast); a label volume has 1 channel with values
    in {0, 1}. Both have shape ``(C, width, height, slices)``; see the module
    docstring for the axis convention.

    Args:
        kind: ``"image"`` or ``"label"``.
        spacing: voxel spacing ``(x, y, slice)`` in mm for the affine; the dataset
            does not record it, so the default uses 1 and sets ``spacing_known`` False.
        dtype: numpy dtype of the returned data; default float32 for images and
            uint8 for labels.
        slice_meta: store ``slice_numbers`` and ``source_files`` in the metadata.
            These lists differ in length between patients, so batches of several
            whole patients need it False.

    Raises:
        DatasetError: a file is missing, unreadable or not a TIFF, an image is not
            RGB uint8, a mask has values other than 0, 1 and 255, or slices differ in size.
    """

    def __init__(
        self,
        kind: str = "image",
        spacing: Sequence[float] | None = None,
        dtype: Any = None,
        slice_meta: bool = True,
    ) -> None:
        if kind not in ("image", "label"):
            raise ValueError(f"kind must be 'image' or 'label', got {kind!r}.")
        if spacing is not None and (len(spacing) != 3 or any(float(s) <= 0 for s in spacing)):
            raise ValueError(f"spacing must be three positive numbers (x, y, slice) in mm, got {spacing!r}.")
        self.kind = kind
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        if dtype is None:
            dtype = np.float32 if kind == "image" else np.uint8
        self.dtype = np.dtype(dtype)
        self.slice_meta = slice_meta

    def __call__(self, slices: Any) -> MetaTensor:
        patient = _resolve_slices(slices, self.kind)
        sources = patient.images if self.kind == "image" else patient.masks
        if not sources:
            raise DatasetError(f"No mask slices (<patient>_<n>_mask.tif) found for patient {patient.patient}.")

        # Slices go to a (slice, channel, x, y) uint8 buffer first. Written straight into
        # the slice-last volume, each slice would scatter with a stride of the slice count.
        stack: np.ndarray | None = None
        first_shape: tuple[int, ...] = ()
        for index, source in enumerate(sources):
            array = read_tiff(source)
            if self.kind == "image":
                _check_image(array, source)
            else:
                _check_mask(array, source)
            if stack is None:
                first_shape = array.shape
                channels = 3 if self.kind == "image" else 1
                stack = np.empty((len(sources), channels, array.shape[1], array.shape[0]), dtype=np.uint8)
            elif array.shape != first_shape:
                raise DatasetError(
                    f"{source} has size {array.shape[:2]}, but {sources[0]} has {first_shape[:2]}; "
                    f"all slices of patient {patient.patient} must have the same size."
                )
            if self.kind == "image":
                stack[index] = array.transpose(2, 1, 0)
            else:
                stack[index, 0] = array.T != 0

        volume = _move_slices_last(stack, self.dtype)

        meta: dict[str, Any] = {
            "filename_or_obj": os.path.dirname(sources[0]),
            "patient_id": patient.patient,
            "space": "RAS",
            "spacing_known": self.spacing is not None,
            "original_channel_dim": 0,
        }
        if self.kind == "image":
            meta["channel_names"] = list(CHANNEL_NAMES)
        if self.slice_meta:
            meta["slice_numbers"] = list(patient.numbers)
            meta["source_files"] = list(sources)
        return MetaTensor(torch.from_numpy(volume), affine=torch.from_numpy(slice_affine(self.spacing)), meta=meta)


class LoadPatientSlicesd(MapTransform):
    """Dictionary version of :class:`LoadPatientSlices`.

    Each key contains a patient folder or a list of slice files. By default ``image``
    is loaded as the 3-channel image and ``label`` as the 1-channel mask. The two
    volumes must have the same spatial shape.

    Args:
        keys: keys to load.
        label_keys: the subset of ``keys`` that hold masks.
        spacing, dtype, slice_meta: as for :class:`LoadPatientSlices`; ``dtype``
            applies to image keys only.
        allow_missing_keys: skip keys that are absent.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        label_keys: KeysCollection = ("label",),
        spacing: Sequence[float] | None = None,
        dtype: Any = None,
        slice_meta: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_keys = {label_keys} if isinstance(label_keys, str) else set(label_keys)
        self.image_loader = LoadPatientSlices("image", spacing, dtype, slice_meta)
        self.label_loader = LoadPatientSlices("label", spacing, None, slice_meta)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        shapes: dict[Hashable, tuple[int, ...]] = {}
        for key in self.key_iterator(d):
            loader = self.label_loader if key in self.label_keys else self.image_loader
            d[key] = loader(d[key])
            shapes[key] = tuple(d[key].shape[1:])
        if len(set(shapes.values())) > 1:
            detail = ", ".join(f"{key}: {shape}" for key, shape in shapes.items())
            raise DatasetError(f"Image and mask volumes differ in size ({detail}); each image needs its own mask.")
        return d


def _atomic_write_tiff(path: Path, array: np.ndarray) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tifffile.imwrite(temporary, array, photometric="minisblack")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class SaveSliceMasks(Transform):
    """Write a label volume as per-slice ``<patient>_<n>_mask.tif`` files (uint8, 0 and 255).

    This is the inverse of :class:`LoadPatientSlices` for masks: a volume loaded
    from TIFF slices and saved again gives the same pixel values in the same
    orientation. Each file is written to a temporary name and renamed into place.

    Args:
        output_dir: masks go to ``output_dir/<patient>/``.
        threshold: voxels above it count as tumour; labels in {0, 1} pass unchanged.

    Raises:
        DatasetError: the target folder contains the volume's own source files
            (``source_files`` in the metadata), so saving could overwrite input data.
    """

    def __init__(self, output_dir: str | os.PathLike, threshold: float = 0.5) -> None:
        self.output_dir = Path(output_dir)
        self.threshold = threshold

    def __call__(self, label: Any, meta: Mapping[str, Any] | None = None) -> list[Path]:
        if meta is None:
            meta = getattr(label, "meta", {})
        array = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
        if array.ndim == 4:
            if array.shape[0] != 1:
                raise ValueError(f"Expected a 1-channel label volume, got shape {array.shape}.")
            array = array[0]
        if array.ndim != 3:
            raise ValueError(f"Expected a label volume (1, x, y, slices) or (x, y, slices), got shape {array.shape}.")

        patient = str(meta.get("patient_id") or "")
        if not patient:
            raise ValueError("The label has no 'patient_id' in its metadata; pass meta={'patient_id': ...}.")
        numbers = list(meta.get("slice_numbers") or range(1, array.shape[-1] + 1))
        if len(numbers) != array.shape[-1]:
            raise ValueError(f"{len(numbers)} slice numbers for a volume of {array.shape[-1]} slices.")
        # Compare folders, not files, because a prediction that took its metadata from
        # the image lists only the image files, and the masks beside them are input too.
        source_folders = {
            os.path.dirname(os.path.realpath(s)) for s in meta.get("source_files") or [] if not is_zip_source(s)
        }

        folder = self.output_dir / patient
        if os.path.realpath(folder) in source_folders:
            raise DatasetError(
                f"Output folder {folder} contains the input slices of {patient}, so writing masks there "
                "would overwrite input files. Choose an output folder outside the dataset."
            )
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for index, number in enumerate(numbers):
            path = folder / f"{patient}_{number}_mask.tif"
            mask = np.where(array[..., index].T > self.threshold, 255, 0).astype(np.uint8)
            _atomic_write_tiff(path, mask)
            written.append(path)
        logger.info("Wrote %d mask slices for %s to %s", len(written), patient, folder)
        return written


class SaveSliceMasksd(MapTransform):
    """Dictionary version of :class:`SaveSliceMasks`; returns the data unchanged.

    Args:
        keys: label keys to save.
        output_dir, threshold: as for :class:`SaveSliceMasks`.
        meta_source_key: take ``patient_id``, ``slice_numbers`` and ``source_files``
            from this key's metadata when the label lacks them (for example the image).
    """

    def __init__(
        self,
        keys: KeysCollection = ("pred",),
        output_dir: str | os.PathLike = ".",
        threshold: float = 0.5,
        meta_source_key: str | None = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.saver = SaveSliceMasks(output_dir, threshold)
        self.meta_source_key = meta_source_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            meta = dict(getattr(d[key], "meta", {}) or {})
            source = d.get(self.meta_source_key) if self.meta_source_key else None
            for name in ("patient_id", "slice_numbers", "source_files"):
                if not meta.get(name) and source is not None and getattr(source, "meta", None):
                    meta[name] = source.meta.get(name)
            self.saver(d[key], meta)
        return d
