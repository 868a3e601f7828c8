"""Tests for the ``summary`` command: CSV counts against the TIFF masks, and valid PNG figures."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from matplotlib.image import imread

from pipeline.cli import main
from pipeline.summary import CSV_COLUMNS, summarise_dataset
from transforms.errors import DatasetError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MASK_NAME = re.compile(r"^(?P<patient>.+)_(?P<number>\d+)_mask\.tif$")
SITE = re.compile(r"^TCGA_(?P<site>[A-Z0-9]{2})_")


def patient_folders(root: Path) -> list[Path]:
    return sorted(path for path in root.iterdir() if path.is_dir())


def count_from_tiffs(folder: Path) -> dict[str, str]:
    """Count slices, tumour slices and tumour pixels of one patient from its mask files, as CSV strings."""
    masks = [tifffile.imread(path) for path in folder.glob("*_mask.tif") if MASK_NAME.match(path.name)]
    images = [path for path in folder.glob("*.tif") if not path.name.endswith("_mask.tif")]
    assert len(images) == len(masks)
    return {
        "patient": folder.name,
        "site": SITE.match(folder.name)["site"],
        "slices": str(len(masks)),
        "tumour_slices": str(sum(int(mask.any()) for mask in masks)),
        "tumour_pixels": str(sum(int(np.count_nonzero(mask)) for mask in masks)),
    }


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        return list(reader)


def check_png(path: Path, min_width: int, min_height: int) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = imread(path)
    assert pixels.ndim == 3
    assert pixels.shape[1] >= min_width
    assert pixels.shape[0] >= min_height
    # A blank canvas would have a single colour.
    assert pixels.std() > 0.05
    return pixels


def copy_patients(source: Path, target: Path, count: int) -> list[Path]:
    root = target / "kaggle_3m"
    root.mkdir(parents=True)
    return [Path(shutil.copytree(folder, root / folder.name)) for folder in patient_folders(source)[:count]]


@pytest.fixture(scope="module")
def summary_out(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("summary")
    return out, summarise_dataset(synthetic_data, out)


def test_csv_matches_tiff_counts(synthetic_data: Path, summary_out: tuple[Path, dict[str, int]]) -> None:
    out, _ = summary_out

    rows = read_csv(out / "patients.csv")

    expected = [count_from_tiffs(folder) for folder in patient_folders(synthetic_data)]
    assert [row["patient"] for row in rows] == [row["patient"] for row in expected]
    for row, expected_row in zip(rows, expected):
        assert row == expected_row


def test_totals_match_tiff_counts(synthetic_data: Path, summary_out: tuple[Path, dict[str, int]]) -> None:
    _, totals = summary_out

    expected = [count_from_tiffs(folder) for folder in patient_folders(synthetic_data)]
    slices = sum(int(row["slices"]) for row in expected)
    tumour_slices = sum(int(row["tumour_slices"]) for row in expected)
    assert totals["patients"] == len(expected)
    assert totals["slices"] == slices
    assert totals["tumour_slices"] == tumour_slices
    assert totals["slices_without_tumour"] == slices - tumour_slices
    assert totals["tumour_pixels"] == sum(int(row["tumour_pixels"]) for row in expected)
    assert totals["skipped_patients"] == 0
    assert 0 < tumour_slices < slices


def test_figures_are_valid_pngs(summary_out: tuple[Path, dict[str, int]]) -> None:
    out, _ = summary_out

    check_png(out / "tumour_slices.png", min_width=400, min_height=400)
    montage = check_png(out / "montage.png", min_width=1000, min_height=300)
    # Mask outlines are drawn in red: some pixels are clearly red, not grey.
    red = (montage[..., 0] > 0.7) & (montage[..., 1] < 0.35) & (montage[..., 2] < 0.35)
    assert red.sum() > 100
    assert sorted(path.name for path in out.iterdir()) == ["montage.png", "patients.csv", "tumour_slices.png"]


def test_cli_prints_totals(synthetic_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["summary", "--data", str(synthetic_data), "--out", str(tmp_path / "out")])

    assert code == 0
    expected = [count_from_tiffs(folder) for folder in patient_folders(synthetic_data)]
    slices = sum(int(row["slices"]) for row in expected)
    tumour_slices = sum(int(row["tumour_slices"]) for row in expected)
    printed = capsys.readouterr().out
    assert f"Total: {len(expected)} patients, {slices} slices, {tumour_slices} with tumour" in printed
    assert (tmp_path / "out" / "patients.csv").is_file()


def test_cli_skips_broken_patient(synthetic_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, broken = copy_patients(synthetic_data, tmp_path / "data", 2)
    (broken / f"{broken.name}_4_mask.tif").unlink()

    code = main(["summary", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--on-error", "skip"])

    assert code == 0
    printed = capsys.readouterr().out
    assert "Total: 1 patient," in printed
    assert "Skipped 1 patient:" in printed
    assert f"{broken.name}: " in printed
    assert f"{broken.name}_4_mask.tif" in printed
    assert read_csv(tmp_path / "out" / "patients.csv") == [count_from_tiffs(good)]
    check_png(tmp_path / "out" / "montage.png", min_width=200, min_height=200)


def test_cli_broken_patient_exits_with_2(
    synthetic_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, broken = copy_patients(synthetic_data, tmp_path / "data", 2)
    (broken / f"{broken.name}_4_mask.tif").unlink()

    code = main(["summary", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")])

    assert code == 2
    assert f"{broken.name}_4_mask.tif" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_summary_rejects_output_inside_input(synthetic_data: Path) -> None:
    with pytest.raises(DatasetError, match="inside the input folder"):
        summarise_dataset(synthetic_data, synthetic_data / "summary")

    assert not (synthetic_data / "summary").exists()


def test_cli_missing_path_exits_with_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_folder"

    code = main(["summary", "--data", str(missing), "--out", str(tmp_path / "out")])

    assert code == 2
    assert f"Dataset path not found: {missing}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_patient_without_tumour(synthetic_data: Path, tmp_path: Path) -> None:
    (folder,) = copy_patients(synthetic_data, tmp_path / "data", 1)
    for path in folder.glob("*_mask.tif"):
        tifffile.imwrite(path, np.zeros_like(tifffile.imread(path)))

    totals = summarise_dataset(tmp_path / "data", tmp_path / "out")

    assert totals["tumour_slices"] == 0
    assert totals["tumour_pixels"] == 0
    assert read_csv(tmp_path / "out" / "patients.csv")[0]["tumour_slices"] == "0"
    check_png(tmp_path / "out" / "montage.png", min_width=200, min_height=200)


@pytest.mark.real_data
def test_real_data_counts(real_data_dir: Path, tmp_path: Path) -> None:
    totals = summarise_dataset(real_data_dir, tmp_path)

    assert totals["patients"] == 20
    assert totals["slices"] == 732
    assert totals["tumour_slices"] == 300
    assert totals["slices_without_tumour"] == 432
    rows = read_csv(tmp_path / "patients.csv")
    assert rows == [count_from_tiffs(folder) for folder in patient_folders(real_data_dir)]
    check_png(tmp_path / "tumour_slices.png", min_width=800, min_height=400)
    check_png(tmp_path / "montage.png", min_width=1000, min_height=600)
