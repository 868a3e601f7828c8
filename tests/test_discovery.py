"""Tests for finding patients in a Kaggle LGG folder tree or in the Kaggle ``archive.zip``.

Every dataset here is written to a temporary folder by the test itself, except in
the real-data tests, which read the folder named by ``LGG_DATA_DIR``.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile

from pipeline.discovery import discover
from transforms.errors import DatasetError
from transforms.sources import read_tiff, source_name

PATIENT_A = "TCGA_AA_0001_20000101"
PATIENT_B = "TCGA_BB_0002_20010202"
PATIENT_C = "TCGA_CC_0003_20020303"
SIZE = 8


def write_patient(folder: Path, count: int, seed: int = 0) -> Path:
    """Write ``count`` slices of random RGB images and 0/255 masks in the Kaggle layout."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for number in range(1, count + 1):
        image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        mask = np.where(rng.random((SIZE, SIZE)) < 0.3, 255, 0).astype(np.uint8)
        tifffile.imwrite(folder / f"{folder.name}_{number}.tif", image, photometric="rgb")
        tifffile.imwrite(folder / f"{folder.name}_{number}_mask.tif", mask, photometric="minisblack")
    return folder


def write_dataset(parent: Path, counts: dict[str, int]) -> Path:
    """Write ``parent/kaggle_3m`` with one patient folder per entry of ``counts`` and a data.csv."""
    root = parent / "kaggle_3m"
    for seed, (patient, count) in enumerate(counts.items()):
        write_patient(root / patient, count, seed=seed)
    (root / "data.csv").write_text("Patient,RNASeqCluster\n" + "".join(f"{p[:12]},1\n" for p in counts))
    return root


def write_kaggle_zip(archive: Path, root: Path, changed: tuple[str, str] | None = None) -> Path:
    """Pack ``root`` twice the way the Kaggle download does, with macOS clutter and a second data.csv.

    Args:
        archive: the zip file to write.
        root: a ``kaggle_3m`` folder.
        changed: ``(patient, file name)`` of one file whose copy under
            ``lgg-mri-segmentation/`` gets different pixels of the same size.
    """
    with zipfile.ZipFile(archive, "w") as handle:
        for prefix in ("kaggle_3m", "lgg-mri-segmentation/kaggle_3m"):
            handle.writestr(f"{prefix}/", b"")
            for path in sorted(root.rglob("*")):
                member = f"{prefix}/{path.relative_to(root).as_posix()}"
                if path.name == "data.csv" and prefix != "kaggle_3m":
                    continue
                if path.is_dir():
                    handle.writestr(f"{member}/", b"")
                elif changed and prefix != "kaggle_3m" and (path.parent.name, path.name) == changed:
                    handle.writestr(member, _inverted_tiff(path))
                else:
                    handle.write(path, member)
        handle.writestr("lgg-mri-segmentation/kaggle_3m/data.csv", b"Patient;RNASeqCluster\r\n")
        for path in sorted(root.rglob("*.tif"))[:4]:
            member = f"__MACOSX/kaggle_3m/{path.parent.name}/._{path.name}"
            handle.writestr(member, b"\x00\x05\x16\x07 macOS resource fork")
    return archive


def _inverted_tiff(path: Path) -> bytes:
    """Return the TIFF bytes of ``path`` with inverted pixels, which keeps the size and changes the content."""
    pixels = tifffile.imread(path)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, 255 - pixels, photometric="rgb" if pixels.ndim == 3 else "minisblack")
    return buffer.getvalue()


def names(sources: list[str]) -> list[str]:
    return [source_name(source) for source in sources]


def discovery_error(path: Path, **options: object) -> str:
    with pytest.raises(DatasetError) as info:
        discover(path, **options)
    return str(info.value)


# Folder layouts


def test_kaggle_3m_folder(tmp_path: Path) -> None:
    root = write_dataset(tmp_path, {PATIENT_A: 3, PATIENT_B: 4})

    found = discover(root)

    assert [p.patient for p in found.patients] == [PATIENT_A, PATIENT_B]
    assert [p.num_slices for p in found.patients] == [3, 4]
    assert found.skipped == []
    assert found.root == str(root)


def test_folder_above_kaggle_3m(tmp_path: Path) -> None:
    write_dataset(tmp_path / "lgg-mri-segmentation", {PATIENT_A: 3, PATIENT_B: 4})

    found = discover(tmp_path)

    assert [p.patient for p in found.patients] == [PATIENT_A, PATIENT_B]
    assert [p.num_slices for p in found.patients] == [3, 4]


def test_single_patient_folder(tmp_path: Path) -> None:
    root = write_dataset(tmp_path, {PATIENT_A: 3, PATIENT_B: 4})

    found = discover(root / PATIENT_B)

    assert [p.patient for p in found.patients] == [PATIENT_B]
    assert names(found.patients[0].images) == [f"{PATIENT_B}_{n}.tif" for n in (1, 2, 3, 4)]
    assert names(found.patients[0].masks) == [f"{PATIENT_B}_{n}_mask.tif" for n in (1, 2, 3, 4)]


def test_slices_ordered_by_number(tmp_path: Path) -> None:
    root = write_dataset(tmp_path, {PATIENT_A: 12})

    patient = discover(root).patients[0]

    image_names = names(patient.images)
    assert patient.numbers == list(range(1, 13))
    assert image_names == [f"{PATIENT_A}_{n}.tif" for n in range(1, 13)]
    assert image_names.index(f"{PATIENT_A}_10.tif") == image_names.index(f"{PATIENT_A}_9.tif") + 1
    assert image_names.index(f"{PATIENT_A}_10.tif") != image_names.index(f"{PATIENT_A}_1.tif") + 1
    assert names(patient.masks) == [f"{PATIENT_A}_{n}_mask.tif" for n in range(1, 13)]


def test_clutter_ignored(tmp_path: Path) -> None:
    root = write_dataset(tmp_path, {PATIENT_A: 3})
    folder = root / PATIENT_A
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / f"._{PATIENT_A}_1.tif").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (folder / "._x.tif").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    macos = tmp_path / "__MACOSX" / "kaggle_3m" / PATIENT_A
    macos.mkdir(parents=True)
    (macos / f"._{PATIENT_A}_1.tif").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    shutil.copy(folder / f"{PATIENT_A}_1.tif", macos / f"{PATIENT_A}_1.tif")

    found = discover(tmp_path)

    assert [p.patient for p in found.patients] == [PATIENT_A]
    assert found.patients[0].num_slices == 3
    assert all("__MACOSX" not in source for source in found.patients[0].images + found.patients[0].masks)
    assert found.skipped == []


def test_doubled_folder_tree_counted_once(tmp_path: Path) -> None:
    root = write_dataset(tmp_path, {PATIENT_A: 3, PATIENT_B: 4})
    shutil.copytree(root, tmp_path / "lgg-mri-segmentation" / "kaggle_3m")

    found = discover(tmp_path)

    assert [p.patient for p in found.patients] == [PATIENT_A, PATIENT_B]
    assert sum(p.num_slices for p in found.patients) == 7


def test_doubled_folder_tree_different_content(tmp_path: Path) -> None:
    root = write_dataset(tmp_path, {PATIENT_A: 3, PATIENT_B: 4})
    copy = Path(shutil.copytree(root, tmp_path / "lgg-mri-segmentation" / "kaggle_3m"))
    changed = copy / PATIENT_B / f"{PATIENT_B}_2.tif"
    changed.write_bytes(_inverted_tiff(changed))

    message = discovery_error(tmp_path)

    assert PATIENT_B in message
    assert "different content" in message
    assert "Remove one copy" in message


def test_images_without_masks_allowed(tmp_path: Path) -> None:
    root = write_dataset(tmp_path, {PATIENT_A: 3})
    for mask in (root / PATIENT_A).glob("*_mask.tif"):
        mask.unlink()

    patient = discover(root, require_masks=False).patients[0]

    assert patient.num_slices == 3
    assert patient.masks == []


# Kaggle archive.zip


@pytest.fixture
def folder_and_zip(tmp_path: Path) -> tuple[Path, Path]:
    root = write_dataset(tmp_path / "folder", {PATIENT_A: 12, PATIENT_B: 3})
    return root, write_kaggle_zip(tmp_path / "archive.zip", root)


def test_zip_each_patient_once(folder_and_zip: tuple[Path, Path]) -> None:
    _, archive = folder_and_zip

    found = discover(archive)

    assert [p.patient for p in found.patients] == [PATIENT_A, PATIENT_B]
    assert [p.num_slices for p in found.patients] == [12, 3]
    assert found.skipped == []


def test_zip_members_ordered_by_number(folder_and_zip: tuple[Path, Path]) -> None:
    _, archive = folder_and_zip

    patient = discover(archive).patients[0]

    assert names(patient.images) == [f"{PATIENT_A}_{n}.tif" for n in range(1, 13)]
    assert names(patient.masks) == [f"{PATIENT_A}_{n}_mask.tif" for n in range(1, 13)]
    assert all(source.startswith(f"{archive}::") for source in patient.images + patient.masks)
    assert all("__MACOSX" not in source for source in patient.images + patient.masks)


def test_zip_slices_equal_folder_slices(folder_and_zip: tuple[Path, Path]) -> None:
    root, archive = folder_and_zip

    from_zip = discover(archive).by_id()
    from_folder = discover(root).by_id()

    assert from_zip.keys() == from_folder.keys()
    for patient_id, patient in from_zip.items():
        folder_patient = from_folder[patient_id]
        assert names(patient.images) == names(folder_patient.images)
        assert names(patient.masks) == names(folder_patient.masks)
        for zip_source, folder_source in zip(patient.images + patient.masks, folder_patient.images + folder_patient.masks):
            zip_array = read_tiff(zip_source)
            folder_array = tifffile.imread(folder_source)
            assert zip_array.dtype == folder_array.dtype
            assert zip_array.shape == folder_array.shape
            assert zip_array.tobytes() == folder_array.tobytes()


def test_zip_copies_with_different_content(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "folder", {PATIENT_A: 3, PATIENT_B: 4})
    archive = write_kaggle_zip(tmp_path / "archive.zip", root, changed=(PATIENT_B, f"{PATIENT_B}_2_mask.tif"))

    message = discovery_error(archive)

    assert PATIENT_B in message
    assert PATIENT_A not in message
    assert str(archive) in message
    assert "different content" in message
    assert "Remove one copy" in message


@pytest.mark.parametrize("member", ["/kaggle_3m/evil.tif", "kaggle_3m/../../evil.tif", "../data.csv"])
def test_zip_unsafe_member_path(tmp_path: Path, member: str) -> None:
    root = write_dataset(tmp_path / "folder", {PATIENT_A: 3})
    archive = write_kaggle_zip(tmp_path / "archive.zip", root)
    with zipfile.ZipFile(archive, "a") as handle:
        handle.writestr(zipfile.ZipInfo(member), b"II*\x00")

    message = discovery_error(archive)

    assert str(archive) in message
    assert repr(member) in message
    assert "unsafe member path" in message
    assert "original Kaggle download" in message


def test_file_not_a_zip(tmp_path: Path) -> None:
    archive = tmp_path / "archive.zip"
    archive.write_bytes(b"<html>Sign in to download</html>\n" * 20)

    message = discovery_error(archive)

    assert str(archive) in message
    assert "not a zip archive" in message
    assert "kaggle_3m folder or archive.zip" in message


def test_truncated_zip(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "folder", {PATIENT_A: 3})
    archive = write_kaggle_zip(tmp_path / "archive.zip", root)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])

    message = discovery_error(archive)

    assert str(archive) in message
    assert "not a zip archive" in message


# Invalid patients


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path, {PATIENT_A: 3, PATIENT_B: 6, PATIENT_C: 3})


def test_image_without_mask(dataset: Path) -> None:
    (dataset / PATIENT_B / f"{PATIENT_B}_4_mask.tif").unlink()

    message = discovery_error(dataset)

    assert str(dataset / PATIENT_B / f"{PATIENT_B}_4.tif") in message
    assert "has no mask" in message
    assert f"expected {PATIENT_B}_4_mask.tif beside it" in message
    assert "Add the mask, or remove the image" in message


def test_mask_without_image(dataset: Path) -> None:
    (dataset / PATIENT_B / f"{PATIENT_B}_4.tif").unlink()

    message = discovery_error(dataset)

    assert str(dataset / PATIENT_B / f"{PATIENT_B}_4_mask.tif") in message
    assert "has no image" in message
    assert f"expected {PATIENT_B}_4.tif beside it" in message
    assert "Add the image, or remove the mask" in message


def test_gap_in_slice_numbers(dataset: Path) -> None:
    (dataset / PATIENT_B / f"{PATIENT_B}_4.tif").unlink()
    (dataset / PATIENT_B / f"{PATIENT_B}_4_mask.tif").unlink()

    message = discovery_error(dataset)

    assert str(dataset / PATIENT_B) in message
    assert "have a gap: missing 4" in message
    assert "found 5 slices numbered up to 6" in message
    assert "Restore the missing slices" in message


def test_duplicate_slice_number(dataset: Path) -> None:
    folder = dataset / PATIENT_B
    shutil.copy(folder / f"{PATIENT_B}_3.tif", folder / f"{PATIENT_B}_03.tif")

    message = discovery_error(dataset)

    assert "Duplicate slice number 3" in message
    assert f"{PATIENT_B}_3.tif" in message
    assert f"{PATIENT_B}_03.tif" in message
    assert "Remove one of them" in message


@pytest.mark.parametrize("name", [f"{PATIENT_B}_x.tif", f"{PATIENT_B}_2a.tif", "scan.tif", f"{PATIENT_B}_2_seg.tif"])
def test_unparsable_tiff_name(dataset: Path, name: str) -> None:
    shutil.copy(dataset / PATIENT_B / f"{PATIENT_B}_2.tif", dataset / PATIENT_B / name)

    message = discovery_error(dataset)

    assert str(dataset / PATIENT_B / name) in message
    assert "Cannot parse the slice file name" in message
    assert "<patient>_<n>.tif" in message
    assert "Rename or remove the file" in message


def test_two_patients_in_one_folder(dataset: Path) -> None:
    # Slice 7 is beyond the 6 slices of patient B, so only the patient ids conflict.
    shutil.copy(dataset / PATIENT_A / f"{PATIENT_A}_1.tif", dataset / PATIENT_B / f"{PATIENT_A}_7.tif")

    message = discovery_error(dataset)

    assert str(dataset / PATIENT_B) in message
    assert f"mixes slices of several patients: {PATIENT_A}, {PATIENT_B}" in message
    assert "Keep one patient per folder" in message


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "kaggle_3m" / PATIENT_A).mkdir(parents=True)

    message = discovery_error(tmp_path)

    assert f"No patients found under {tmp_path}" in message
    assert "<patient>_<n>.tif" in message
    assert "Give the kaggle_3m folder or the Kaggle archive.zip" in message


def test_path_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_folder" / "kaggle_3m"

    message = discovery_error(missing)

    assert str(missing) in message
    assert "not found" in message
    assert "Give the kaggle_3m folder or the Kaggle archive.zip" in message


def test_skip_invalid_patient(dataset: Path) -> None:
    missing_mask = dataset / PATIENT_B / f"{PATIENT_B}_4_mask.tif"
    missing_mask.unlink()

    found = discover(dataset, on_error="skip")

    assert [p.patient for p in found.patients] == [PATIENT_A, PATIENT_C]
    assert [name for name, _ in found.skipped] == [PATIENT_B]
    reason = found.skipped[0][1]
    assert f"{PATIENT_B}_4.tif" in reason
    assert "has no mask" in reason


def test_skip_all_patients_invalid(dataset: Path) -> None:
    for patient in (PATIENT_A, PATIENT_B, PATIENT_C):
        (dataset / patient / f"{patient}_2_mask.tif").unlink()

    found = discover(dataset, on_error="skip")

    assert found.patients == []
    assert [name for name, _ in found.skipped] == [PATIENT_A, PATIENT_B, PATIENT_C]


def test_invalid_on_error_value(dataset: Path) -> None:
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip'"):
        discover(dataset, on_error="ignore")


# Command line


def run_summary(data: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "summary", "--data", str(data), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_summary_command_invalid_patient(dataset: Path, tmp_path: Path) -> None:
    (dataset / PATIENT_B / f"{PATIENT_B}_4_mask.tif").unlink()

    result = run_summary(dataset, tmp_path / "summary")

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"error: Image {str(dataset / PATIENT_B / f'{PATIENT_B}_4.tif')!r} has no mask" in result.stderr
    assert "Add the mask, or remove the image" in result.stderr
    assert not (tmp_path / "summary" / "patients.csv").exists()


def test_summary_command_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_folder"

    result = run_summary(missing, tmp_path / "summary")

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"error: Dataset path not found: {missing}" in result.stderr


# Real data


def test_real_data_counts(real_data_dir: Path) -> None:
    found = discover(real_data_dir)

    patients = len(found.patients)
    slices = sum(p.num_slices for p in found.patients)
    # The development subset and the whole Kaggle dataset, as published.
    assert (patients, slices) in {(20, 732), (110, 3929)}
    assert found.skipped == []
    assert all(len(p.masks) == p.num_slices for p in found.patients)


def test_real_data_checksum_list_found_once(real_data_dir: Path) -> None:
    checksum_list = real_data_dir.with_name(f"{real_data_dir.name}.sha256")
    if not checksum_list.is_file():
        pytest.skip(f"no checksum list {checksum_list} beside the real data")
    listed = [line.split(maxsplit=1)[1].strip() for line in checksum_list.read_text().splitlines() if line.strip()]

    found = discover(real_data_dir)

    sources = [source for p in found.patients for source in p.images + p.masks]
    counts = Counter(Path(os.path.relpath(source, real_data_dir)).as_posix() for source in sources)
    assert len(listed) == len(set(listed))
    assert [path for path in listed if counts[path] != 1] == []
    assert sorted(counts) == sorted(listed)


def test_other_patient_slice_with_same_number(dataset: Path) -> None:
    # Slice 1 of patient A clashes by number with slice 1 of patient B; the patient ids are the real problem.
    shutil.copy(dataset / PATIENT_A / f"{PATIENT_A}_1.tif", dataset / PATIENT_B / f"{PATIENT_A}_1.tif")

    message = discovery_error(dataset)

    assert f"mixes slices of several patients: {PATIENT_A}, {PATIENT_B}" in message
    assert "Duplicate slice number" not in message
