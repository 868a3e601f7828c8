"""Reusable MONAI transforms for the Kaggle LGG brain MRI dataset (Buda et al.).

``LoadPatientSlicesd`` loads a patient's TIFF slices into channel-first volumes,
``SaveSliceMasksd`` writes label volumes back to Kaggle-style mask slices, and
``StackNeighborSlicesd`` adds neighbouring slices as channels for 2.5D networks.
"""

from __future__ import annotations

from transforms.errors import DatasetError
from transforms.io import (
    CHANNEL_NAMES,
    LoadPatientSlices,
    LoadPatientSlicesd,
    SaveSliceMasks,
    SaveSliceMasksd,
    slice_affine,
)
from transforms.slice_context import StackNeighborSlices, StackNeighborSlicesd
from transforms.slices import PatientSlices, list_patient_folder, pair_slices

__all__ = [
    "CHANNEL_NAMES",
    "DatasetError",
    "LoadPatientSlices",
    "LoadPatientSlicesd",
    "PatientSlices",
    "SaveSliceMasks",
    "SaveSliceMasksd",
    "StackNeighborSlices",
    "StackNeighborSlicesd",
    "list_patient_folder",
    "pair_slices",
    "slice_affine",
]
