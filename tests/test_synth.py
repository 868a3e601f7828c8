"""Tests for the synthetic dataset generator and its ``synth`` command."""

from __future__ import annotations

import csv
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from pipeline.cli import main
from pipeline.synth import generate_dataset, synthesize_patient
from transforms.errors import DatasetError

PROJECT_ROOT = Path(__file__).resolve().parents[1]

KAGGLE_HEADER = (
    "Patient,RNASeqCluster,MethylationCluster,miRNACluster,CNCluster,RPPACluster,OncosignCluster,COCCluster,"
    "histological_type,neoplasm_histologic_grade,tumor_tissue_site,laterality,tumor_location,gender,"
    "age_at_initial_pathologic,race,ethnicity,death01"
)
PATIENT_FOLDER = re.compile(r"^TCGA_(CS|DU|EZ|FG|HT)_[A-Z0-9]{4}_(19|20)\d{6}$")

# Six patients, so the site codes wrap around once.
PATIENTS = 6
SLICES = (6, 12)
SIZE = 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("synth")
    return generate_dataset(out_dir, patients=PATIENTS, seed=3, slices=SLICES, size=SIZE)


def patient_folders(root: Path) -> list[Path]:
    return sorted(path for path in root.iterdir() if path.is_dir())


def slice_count(folder: Path) -> int:
    return len([path for path in folder.glob("*.tif") if not path.name.endswith("_mask.tif")])


def read_patient(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a patient's images and masks, stacked in slice order."""
    count = slice_count(folder)
    images = np.stack([tifffile.imread(folder / f"{folder.name}_{n}.tif") for n in range(1, count + 1)])
    masks = np.stack([tifffile.imread(folder / f"{folder.name}_{n}_mask.tif") for n in range(1, count + 1)])
    return images, masks


def file_hashes(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def run_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *arguments],
        cwd=PROJECT_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_layout_has_patient_folders_and_csv(dataset: Path) -> None:
    assert dataset.name == "kaggle_3m"

    names = sorted(path.name for path in dataset.iterdir())
    folders = [path.name for path in patient_folders(dataset)]
    assert names == sorted([*folders, "data.csv"])
    assert len(folders) == PATIENTS
    for name in folders:
        assert PATIENT_FOLDER.match(name), name


def test_site_codes_cycle_in_order(dataset: Path) -> None:
    expected = ["CS", "DU", "EZ", "FG", "HT", "CS"]
    for index, site in enumerate(expected):
        patient = synthesize_patient(seed=3, index=index, slices=(3, 3), size=32)
        assert patient.folder.split("_")[1] == site, index

    sites = [path.name.split("_")[1] for path in patient_folders(dataset)]
    assert sorted(sites) == sorted(expected)


def test_slice_numbers_run_from_1_without_gaps(dataset: Path) -> None:
    for folder in patient_folders(dataset):
        pattern = re.compile(rf"^{folder.name}_(\d+)(_mask)?\.tif$")
        image_numbers = []
        mask_numbers = []
        for path in folder.iterdir():
            match = pattern.match(path.name)
            assert match, f"unexpected file {path}"
            if match.group(2):
                mask_numbers.append(int(match.group(1)))
            else:
                image_numbers.append(int(match.group(1)))

        count = len(image_numbers)
        assert SLICES[0] <= count <= SLICES[1]
        assert sorted(image_numbers) == list(range(1, count + 1))
        assert sorted(mask_numbers) == list(range(1, count + 1))


def test_tiff_files_match_kaggle_format(dataset: Path) -> None:
    for folder in patient_folders(dataset):
        for path in sorted(folder.glob("*.tif")):
            with tifffile.TiffFile(path) as tiff:
                assert len(tiff.pages) == 1
                page = tiff.pages[0]
                assert page.dtype == np.uint8
                assert page.compression == tifffile.COMPRESSION.NONE
                assert page.planarconfig == tifffile.PLANARCONFIG.CONTIG
                if path.name.endswith("_mask.tif"):
                    assert page.shape == (SIZE, SIZE)
                    assert page.photometric == tifffile.PHOTOMETRIC.MINISBLACK
                else:
                    assert page.shape == (SIZE, SIZE, 3)
                    assert page.photometric == tifffile.PHOTOMETRIC.RGB


def test_default_size_is_256(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path, patients=1, slices=(3, 3))
    folder = patient_folders(root)[0]

    with tifffile.TiffFile(folder / f"{folder.name}_1.tif") as tiff:
        assert tiff.pages[0].shape == (256, 256, 3)
        assert tiff.pages[0].rowsperstrip == 11
    with tifffile.TiffFile(folder / f"{folder.name}_1_mask.tif") as tiff:
        assert tiff.pages[0].shape == (256, 256)
        assert tiff.pages[0].rowsperstrip == 32


def test_mask_values_are_0_and_255(dataset: Path) -> None:
    values: set[int] = set()
    for folder in patient_folders(dataset):
        _, masks = read_patient(folder)
        values |= set(np.unique(masks).tolist())

    assert values == {0, 255}


def test_tumour_on_consecutive_inner_slices(dataset: Path) -> None:
    for folder in patient_folders(dataset):
        _, masks = read_patient(folder)
        tumour_slices = np.flatnonzero(masks.any(axis=(1, 2)))

        assert len(tumour_slices) > 0, folder.name
        assert tumour_slices[0] > 0, f"{folder.name}: first slice has tumour"
        assert tumour_slices[-1] < len(masks) - 1, f"{folder.name}: last slice has tumour"
        assert np.all(np.diff(tumour_slices) == 1), f"{folder.name}: tumour slices {tumour_slices}"


def test_tumour_slice_fraction_like_kaggle(dataset: Path) -> None:
    # In a 20-patient sample of the Kaggle data, 300 of 732 slices (41 %) have tumour.
    total = 0
    with_tumour = 0
    for folder in patient_folders(dataset):
        _, masks = read_patient(folder)
        total += len(masks)
        with_tumour += int(masks.any(axis=(1, 2)).sum())

    assert 0.25 <= with_tumour / total <= 0.6


def test_flair_brighter_in_tumour_than_brain(dataset: Path) -> None:
    for folder in patient_folders(dataset):
        images, masks = read_patient(folder)
        tumour = masks > 0

        # Ring of 3 pixels around the tumour on each slice, inside the head.
        dilated = ndimage.binary_dilation(tumour, structure=np.ones((1, 3, 3), dtype=bool), iterations=3)
        ring = dilated & ~tumour & images.any(axis=-1)
        flair = images[..., 1].astype(np.float64)

        assert ring.any(), folder.name
        assert flair[tumour].mean() > 1.3 * flair[ring].mean(), folder.name


def test_background_outside_head_is_0(dataset: Path) -> None:
    for folder in patient_folders(dataset):
        images, _ = read_patient(folder)

        assert np.all(images[:, 0, :, :] == 0), folder.name
        assert np.all(images[:, -1, :, :] == 0), folder.name
        assert np.all(images[:, :, 0, :] == 0), folder.name
        assert np.all(images[:, :, -1, :] == 0), folder.name
        assert np.all(images.reshape(len(images), -1).max(axis=1) > 0), f"{folder.name}: empty slice"


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    first = generate_dataset(tmp_path / "first", patients=2, seed=7, slices=(4, 6), size=32)
    second = generate_dataset(tmp_path / "second", patients=2, seed=7, slices=(4, 6), size=32)

    assert file_hashes(first) == file_hashes(second)


def test_different_seed_gives_different_images(tmp_path: Path) -> None:
    first = generate_dataset(tmp_path / "first", patients=2, seed=7, slices=(4, 6), size=32)
    second = generate_dataset(tmp_path / "second", patients=2, seed=8, slices=(4, 6), size=32)

    # Masks of tumour-free slices are all zeros in both, so compare images only.
    first_images = {digest for name, digest in file_hashes(first).items() if not name.endswith("_mask.tif")}
    second_images = {digest for name, digest in file_hashes(second).items() if not name.endswith("_mask.tif")}
    assert first_images.isdisjoint(second_images)


def test_patient_independent_of_patient_count(tmp_path: Path) -> None:
    fewer = file_hashes(generate_dataset(tmp_path / "fewer", patients=2, seed=5, slices=(4, 6), size=32))
    more = file_hashes(generate_dataset(tmp_path / "more", patients=3, seed=5, slices=(4, 6), size=32))

    shared = {name: digest for name, digest in more.items() if name in fewer and name != "data.csv"}
    assert len(shared) == len(fewer) - 1
    for name, digest in shared.items():
        assert fewer[name] == digest, name


def test_data_csv_has_one_row_per_patient(dataset: Path) -> None:
    content = (dataset / "data.csv").read_bytes()
    assert b"\r" not in content
    assert content.endswith(b"\n")

    rows = list(csv.reader(content.decode("utf-8").splitlines()))
    assert ",".join(rows[0]) == KAGGLE_HEADER
    assert len(rows) == PATIENTS + 1

    patient_ids = sorted(row[0] for row in rows[1:])
    assert patient_ids == sorted(path.name.rsplit("_", 1)[0] for path in patient_folders(dataset))
    for row in rows[1:]:
        assert len(row) == len(rows[0]), row
        assert all(value.isdigit() for value in row[1:]), row


def test_existing_dataset_rejected(tmp_path: Path) -> None:
    generate_dataset(tmp_path, patients=1, slices=(3, 4), size=32)

    with pytest.raises(DatasetError) as error:
        generate_dataset(tmp_path, patients=1, slices=(3, 4), size=32)

    message = str(error.value)
    assert str(tmp_path / "kaggle_3m") in message
    assert "overwrite" in message


def test_overwrite_replaces_patient_folders(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path, patients=3, slices=(3, 4), size=32)
    (root / "notes.txt").write_text("kept\n")

    generate_dataset(tmp_path, patients=1, seed=1, slices=(3, 4), size=32, overwrite=True)

    assert len(patient_folders(root)) == 1
    assert (root / "notes.txt").read_text() == "kept\n"
    assert len((root / "data.csv").read_text().splitlines()) == 2
    assert not list(root.rglob("*.tmp"))


@pytest.mark.parametrize(
    ("arguments", "parameter"),
    [
        ({"patients": 0}, "patients"),
        ({"seed": -1}, "seed"),
        ({"slices": (2, 5)}, "slices[0]"),
        ({"slices": (6, 5)}, "slices[1]"),
        ({"size": 40}, "size"),
        ({"size": 16}, "size"),
    ],
)
def test_invalid_argument_raises_value_error(tmp_path: Path, arguments: dict[str, object], parameter: str) -> None:
    with pytest.raises(ValueError, match=re.escape(parameter)):
        generate_dataset(tmp_path, **arguments)

    assert not (tmp_path / "kaggle_3m").exists()


def test_cli_writes_dataset(tmp_path: Path) -> None:
    result = run_cli("synth", "--out", str(tmp_path), "--patients", "2", "--size", "32", "--min-slices", "3")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert str(tmp_path / "kaggle_3m") in lines[0]
    root = tmp_path / "kaggle_3m"
    assert len(patient_folders(root)) == 2
    assert len((root / "data.csv").read_text().splitlines()) == 3
    for folder in patient_folders(root):
        count = slice_count(folder)
        assert 3 <= count <= 32
        assert len(list(folder.glob("*_mask.tif"))) == count


@pytest.mark.parametrize(
    ("options", "option"),
    [
        (["--patients", "0"], "--patients"),
        (["--patients", "1001"], "--patients"),
        (["--patients", "many"], "--patients"),
        (["--seed", "-1"], "--seed"),
        (["--min-slices", "2"], "--min-slices"),
        (["--min-slices", "9", "--max-slices", "8"], "--max-slices"),
        (["--size", "40"], "--size"),
        (["--size", "16"], "--size"),
    ],
)
def test_cli_invalid_option_exits_with_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], option: str
) -> None:
    # argparse exits with 2 for a value that is not an integer, and main() returns 2
    # for a value out of range.
    try:
        code = main(["synth", "--out", str(tmp_path), *options])
    except SystemExit as exit_:
        code = exit_.code

    assert code == 2
    assert option in capsys.readouterr().err
    assert not (tmp_path / "kaggle_3m").exists()


def test_cli_existing_dataset_exits_with_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate_dataset(tmp_path, patients=1, slices=(3, 4), size=32)

    code = main(["synth", "--out", str(tmp_path), "--size", "32", "--min-slices", "3", "--max-slices", "4"])

    assert code == 2
    error = capsys.readouterr().err
    assert str(tmp_path / "kaggle_3m") in error
    assert "--overwrite" in error


@pytest.mark.real_data
def test_tiff_tags_match_real_data(tmp_path: Path, real_data_dir: Path) -> None:
    real_folder = patient_folders(real_data_dir)[0]
    synthetic_folder = patient_folders(generate_dataset(tmp_path, patients=1, slices=(3, 3)))[0]

    for suffix in (".tif", "_mask.tif"):
        with (
            tifffile.TiffFile(real_folder / f"{real_folder.name}_1{suffix}") as real,
            tifffile.TiffFile(synthetic_folder / f"{synthetic_folder.name}_1{suffix}") as synthetic,
        ):
            for attribute in ("shape", "dtype", "photometric", "planarconfig", "compression", "rowsperstrip"):
                real_value = getattr(real.pages[0], attribute)
                synthetic_value = getattr(synthetic.pages[0], attribute)
                assert synthetic_value == real_value, f"{suffix} {attribute}"
