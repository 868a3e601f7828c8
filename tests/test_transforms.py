"""Tests for loading TIFF slices into volumes, saving masks back to slices and stacking neighbour slices.

Expected values come from ``tifffile`` reads of the same files, never from the loader
itself. Volumes follow ``volume[:, x, y, n - 1] == tiff_n[y, x, :]``.
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.data import MetaTensor

from pipeline.discovery import discover
from transforms import (
    CHANNEL_NAMES,
    DatasetError,
    LoadPatientSlicesd,
    SaveSliceMasksd,
    StackNeighborSlicesd,
)

PATIENT = "TCGA_XY_0042_20050505"
ROWS, COLUMNS, SLICES = 24, 40, 12


def write_slices(folder: Path, images: np.ndarray, masks: np.ndarray) -> Path:
    """Write ``images[n - 1]`` (rows, columns, 3) and ``masks[n - 1]`` as slice ``n`` in the Kaggle layout."""
    folder.mkdir(parents=True)
    for number, (image, mask) in enumerate(zip(images, masks), start=1):
        tifffile.imwrite(folder / f"{folder.name}_{number}.tif", image, photometric="rgb")
        tifffile.imwrite(folder / f"{folder.name}_{number}_mask.tif", mask, photometric="minisblack")
    return folder


def random_patient(folder: Path, rows: int = ROWS, columns: int = COLUMNS, slices: int = SLICES) -> Path:
    """Write a patient with random pixels and non-square slices, so that a swapped axis changes the shape."""
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (slices, rows, columns, 3), dtype=np.uint8)
    masks = np.where(rng.random((slices, rows, columns)) < 0.2, 255, 0).astype(np.uint8)
    return write_slices(folder, images, masks)


def numbered(folder: Path, suffix: str) -> list[Path]:
    """Return the ``<patient>_<n><suffix>.tif`` files of a folder ordered by ``n``."""
    count = len(list(folder.glob(f"{folder.name}_*_mask.tif")))
    return [folder / f"{folder.name}_{n}{suffix}.tif" for n in range(1, count + 1)]


def assert_matches_tiffs(image: torch.Tensor, label: torch.Tensor, folder: Path) -> None:
    """Compare every voxel of both volumes with ``tifffile`` reads of the patient's slices."""
    image_files = numbered(folder, "")
    mask_files = numbered(folder, "_mask")
    assert image.shape[-1] == len(image_files)
    assert label.shape[-1] == len(mask_files)
    for index, (image_file, mask_file) in enumerate(zip(image_files, mask_files)):
        tiff = tifffile.imread(image_file)
        mask = tifffile.imread(mask_file)
        # volume[c, x, y, n - 1] == tiff_n[y, x, c], so the slice is the TIFF with its axes reversed.
        assert np.array_equal(image[..., index].numpy(), tiff.transpose(2, 1, 0).astype(np.float32))
        assert np.array_equal(label[0, ..., index].numpy(), (mask.T != 0).astype(np.uint8))


def file_hashes(root: Path) -> dict[str, str]:
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def patient_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A patient of 12 random non-square slices (24 rows, 40 columns). Read-only for tests."""
    return random_patient(tmp_path_factory.mktemp("random") / "kaggle_3m" / PATIENT)


@pytest.fixture(scope="module")
def loaded(patient_folder: Path) -> dict:
    return LoadPatientSlicesd()({"image": str(patient_folder), "label": str(patient_folder)})


# Loading


def test_load_shapes(loaded: dict) -> None:
    assert tuple(loaded["image"].shape) == (3, COLUMNS, ROWS, SLICES)
    assert tuple(loaded["label"].shape) == (1, COLUMNS, ROWS, SLICES)


def test_load_types(loaded: dict) -> None:
    assert isinstance(loaded["image"], MetaTensor)
    assert isinstance(loaded["label"], MetaTensor)
    assert loaded["image"].dtype == torch.float32
    assert loaded["label"].dtype == torch.uint8


def test_load_label_values(loaded: dict) -> None:
    assert set(torch.unique(loaded["label"]).tolist()) == {0, 1}


def test_load_image_values_in_uint8_range(loaded: dict) -> None:
    assert float(loaded["image"].min()) >= 0
    assert float(loaded["image"].max()) <= 255
    assert torch.equal(loaded["image"], torch.round(loaded["image"]))


def test_load_metadata(loaded: dict, patient_folder: Path) -> None:
    image, label = loaded["image"], loaded["label"]

    assert image.meta["patient_id"] == PATIENT
    assert label.meta["patient_id"] == PATIENT
    assert image.meta["channel_names"] == list(CHANNEL_NAMES)
    assert list(CHANNEL_NAMES) == ["pre-contrast", "FLAIR", "post-contrast"]
    assert "channel_names" not in label.meta
    assert image.meta["slice_numbers"] == list(range(1, SLICES + 1))
    assert label.meta["slice_numbers"] == list(range(1, SLICES + 1))
    assert image.meta["source_files"] == [str(path) for path in numbered(patient_folder, "")]
    assert label.meta["source_files"] == [str(path) for path in numbered(patient_folder, "_mask")]
    assert image.meta["spacing_known"] is False


def test_load_default_affine(loaded: dict) -> None:
    expected = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64))

    assert torch.equal(loaded["image"].affine, expected)
    assert torch.equal(loaded["label"].affine, expected)


def test_load_affine_carries_spacing(patient_folder: Path) -> None:
    data = LoadPatientSlicesd(spacing=(0.5, 0.75, 3.0))({"image": str(patient_folder), "label": str(patient_folder)})

    expected = torch.diag(torch.tensor([-0.5, -0.75, 3.0, 1.0], dtype=torch.float64))
    assert torch.equal(data["image"].affine, expected)
    assert torch.equal(data["label"].affine, expected)
    assert data["image"].pixdim.tolist() == [0.5, 0.75, 3.0]
    assert data["image"].meta["spacing_known"] is True


def test_load_every_voxel_matches_tiff(loaded: dict, patient_folder: Path) -> None:
    assert_matches_tiffs(loaded["image"], loaded["label"], patient_folder)


def test_load_axis_convention_corner(loaded: dict, patient_folder: Path) -> None:
    tiff = tifffile.imread(patient_folder / f"{PATIENT}_5.tif")
    x, y = COLUMNS - 1, 0

    # The top right pixel of TIFF slice 5 (row 0, last column).
    assert loaded["image"][:, x, y, 4].tolist() == tiff[y, x, :].tolist()


def test_load_synthetic_patient(small_synthetic_data: Path) -> None:
    folder = sorted(path for path in small_synthetic_data.iterdir() if path.is_dir())[0]

    data = LoadPatientSlicesd()({"image": str(folder), "label": str(folder)})

    assert data["image"].meta["patient_id"] == folder.name
    assert set(torch.unique(data["label"]).tolist()) == {0, 1}
    assert_matches_tiffs(data["image"], data["label"], folder)


def test_list_input_equals_folder_input(loaded: dict, patient_folder: Path) -> None:
    images = [str(path) for path in numbered(patient_folder, "")]
    masks = [str(path) for path in numbered(patient_folder, "_mask")]
    # The image list is reversed and made of Path objects, so the loader must order slices by number itself.
    data = LoadPatientSlicesd()({"image": [Path(p) for p in reversed(images)], "label": list(reversed(masks))})

    assert torch.equal(data["image"].as_tensor(), loaded["image"].as_tensor())
    assert torch.equal(data["label"].as_tensor(), loaded["label"].as_tensor())
    assert data["image"].meta["slice_numbers"] == loaded["image"].meta["slice_numbers"]


def test_zip_member_input(loaded: dict, patient_folder: Path, tmp_path: Path) -> None:
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(patient_folder.iterdir()):
            handle.write(path, f"kaggle_3m/{PATIENT}/{path.name}")
    patient = discover(archive).patients[0]

    data = LoadPatientSlicesd()({"image": patient.images, "label": patient.masks})

    assert torch.equal(data["image"].as_tensor(), loaded["image"].as_tensor())
    assert torch.equal(data["label"].as_tensor(), loaded["label"].as_tensor())
    assert data["image"].meta["source_files"][0] == f"{archive}::kaggle_3m/{PATIENT}/{PATIENT}_1.tif"


def test_image_and_label_of_different_patients(patient_folder: Path, tmp_path: Path) -> None:
    other = random_patient(tmp_path / "TCGA_XY_0043_20060606", slices=SLICES - 2)

    with pytest.raises(DatasetError) as info:
        LoadPatientSlicesd()({"image": str(patient_folder), "label": str(other)})

    message = str(info.value)
    assert "Image and mask volumes differ in size" in message
    assert f"image: {(COLUMNS, ROWS, SLICES)}" in message
    assert f"label: {(COLUMNS, ROWS, SLICES - 2)}" in message


# Saving masks


@pytest.fixture
def dataset_copy(patient_folder: Path, tmp_path: Path) -> Path:
    root = tmp_path / "kaggle_3m"
    shutil.copytree(patient_folder, root / PATIENT)
    return root


def test_mask_round_trip(dataset_copy: Path, tmp_path: Path) -> None:
    folder = dataset_copy / PATIENT
    data = LoadPatientSlicesd()({"image": str(folder), "label": str(folder)})
    out = tmp_path / "predictions"

    SaveSliceMasksd(keys="label", output_dir=out)(data)

    written = sorted(path.name for path in (out / PATIENT).iterdir())
    assert written == sorted(path.name for path in numbered(folder, "_mask"))
    for source in numbered(folder, "_mask"):
        original = tifffile.imread(source)
        saved = tifffile.imread(out / PATIENT / source.name)
        assert saved.dtype == np.uint8
        assert saved.shape == original.shape
        assert set(np.unique(saved).tolist()) <= {0, 255}
        assert saved.tobytes() == original.tobytes()


def test_save_rejects_dataset_folder(dataset_copy: Path) -> None:
    folder = dataset_copy / PATIENT
    data = LoadPatientSlicesd()({"image": str(folder), "label": str(folder)})
    before = file_hashes(dataset_copy)

    with pytest.raises(DatasetError) as info:
        SaveSliceMasksd(keys="label", output_dir=dataset_copy)(data)

    message = str(info.value)
    assert str(folder) in message
    assert "would overwrite input files" in message
    assert "Choose an output folder outside the dataset" in message
    assert file_hashes(dataset_copy) == before


def test_save_prediction_rejects_dataset_folder(dataset_copy: Path) -> None:
    folder = dataset_copy / PATIENT
    data = LoadPatientSlicesd()({"image": str(folder), "label": str(folder)})
    # A prediction without metadata takes it from the image, whose sources are image files only.
    data["pred"] = torch.ones_like(data["label"].as_tensor())
    before = file_hashes(dataset_copy)

    with pytest.raises(DatasetError) as info:
        SaveSliceMasksd(keys="pred", output_dir=dataset_copy)(data)

    assert str(folder) in str(info.value)
    assert file_hashes(dataset_copy) == before


# Invalid slices at load time


def _write_image(path: Path, pixels: np.ndarray) -> None:
    tifffile.imwrite(path, pixels, photometric="rgb" if pixels.ndim == 3 and pixels.shape[-1] in (3, 4) else None)


def _truncate(path: Path, size: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if size is None else size])


BAD_SLICES = {
    "different size": (
        "image",
        lambda path: _write_image(path, np.zeros((ROWS + 2, COLUMNS, 3), np.uint8)),
        ["has size (26, 40)", "has (24, 40)", f"all slices of patient {PATIENT} must have the same size"],
    ),
    "greyscale image": (
        "image",
        lambda path: _write_image(path, np.zeros((ROWS, COLUMNS), np.uint8)),
        ["greyscale image of shape (24, 40)", "RGB slice", "Use the original three-channel file"],
    ),
    "RGBA image": (
        "image",
        lambda path: tifffile.imwrite(path, np.zeros((ROWS, COLUMNS, 4), np.uint8), photometric="rgb", extrasamples=[2]),
        ["shape (24, 40, 4)", "expected height x width x 3 channels", "Use the original three-channel file"],
    ),
    "uint16 image": (
        "image",
        lambda path: _write_image(path, np.zeros((ROWS, COLUMNS, 3), np.uint16)),
        ["pixel type uint16", "expected uint8", "Use the original 8-bit file"],
    ),
    "mask values": (
        "mask",
        lambda path: tifffile.imwrite(path, np.full((ROWS, COLUMNS), 128, np.uint8)),
        ["mask values [128]", "only 0, 1 and 255 are allowed", "Binarise the mask"],
    ),
    "truncated image": (
        "image",
        _truncate,
        ["as a TIFF image", "truncated", "replace it with the original"],
    ),
    "image cut after the header": (
        "image",
        lambda path: _truncate(path, 8),
        ["as a TIFF image", "no image data", "replace it with the original"],
    ),
    "image cut inside the header": (
        "image",
        lambda path: _truncate(path, 5),
        ["as a TIFF image", "truncated", "replace it with the original"],
    ),
    "truncated mask": (
        "mask",
        _truncate,
        ["as a TIFF image", "truncated", "replace it with the original"],
    ),
    "not a TIFF file": (
        "image",
        lambda path: path.write_bytes(b"<html>Sign in to download</html>\n" * 30),
        ["as a TIFF image", "not a TIFF file", "replace it with the original"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SLICES))
def test_load_rejects_bad_slice(case: str, tmp_path: Path) -> None:
    kind, damage, expected = BAD_SLICES[case]
    folder = random_patient(tmp_path / PATIENT, slices=3)
    bad = folder / (f"{PATIENT}_2.tif" if kind == "image" else f"{PATIENT}_2_mask.tif")
    damage(bad)

    with pytest.raises(DatasetError) as info:
        LoadPatientSlicesd()({"image": str(folder), "label": str(folder)})

    message = str(info.value)
    assert str(bad) in message
    for fragment in expected:
        assert fragment in message


# Neighbour slices


def test_stack_neighbours_radius_one() -> None:
    depth = 5
    # Voxel value 100 * channel + slice index, so every block shows which slice it came from.
    volume = torch.arange(depth, dtype=torch.float32).expand(2, 3, 4, depth) + 100 * torch.arange(2.0).view(2, 1, 1, 1)

    stacked = StackNeighborSlicesd(keys="image", radius=1)({"image": volume})["image"]

    assert tuple(stacked.shape) == (6, 3, 4, depth)
    previous, current, following = stacked[0:2], stacked[2:4], stacked[4:6]
    assert torch.equal(current, volume)
    for index in range(depth):
        assert torch.equal(previous[..., index], volume[..., max(index - 1, 0)])
        assert torch.equal(following[..., index], volume[..., min(index + 1, depth - 1)])
    assert torch.equal(previous[..., 0], volume[..., 0])
    assert torch.equal(following[..., depth - 1], volume[..., depth - 1])


def test_stack_neighbours_loaded_volume(loaded: dict) -> None:
    image = loaded["image"]

    stacked = StackNeighborSlicesd(keys="image", radius=1)({"image": image})["image"]

    assert isinstance(stacked, MetaTensor)
    assert tuple(stacked.shape) == (9, COLUMNS, ROWS, SLICES)
    assert torch.equal(stacked.affine, image.affine)
    assert stacked.meta["patient_id"] == PATIENT
    assert stacked.meta["channel_names"][:3] == [f"{name} (slice -1)" for name in CHANNEL_NAMES]
    assert stacked.meta["channel_names"][3:6] == [f"{name} (slice +0)" for name in CHANNEL_NAMES]
    assert stacked.meta["channel_names"][6:] == [f"{name} (slice +1)" for name in CHANNEL_NAMES]
    assert torch.equal(stacked[0:3, ..., 1:].as_tensor(), image[..., :-1].as_tensor())
    assert torch.equal(stacked[6:9, ..., :-1].as_tensor(), image[..., 1:].as_tensor())


def test_stack_neighbours_radius_zero(loaded: dict) -> None:
    stacked = StackNeighborSlicesd(keys="image", radius=0)({"image": loaded["image"]})["image"]

    assert stacked is loaded["image"]


# Real data


def test_real_patients_match_tiffs(real_data_dir: Path) -> None:
    patients = discover(real_data_dir).patients
    # The two patients with the fewest slices keep the test short.
    for patient in sorted(patients, key=lambda p: (p.num_slices, p.patient))[:2]:
        folder = Path(patient.images[0]).parent

        data = LoadPatientSlicesd()({"image": str(folder), "label": str(folder)})

        assert tuple(data["image"].shape) == (3, 256, 256, patient.num_slices)
        assert tuple(data["label"].shape) == (1, 256, 256, patient.num_slices)
        assert data["image"].meta["patient_id"] == patient.patient
        assert_matches_tiffs(data["image"], data["label"], folder)
