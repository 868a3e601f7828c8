"""Tests for the ``convert`` command: NIfTI and NRRD volumes compared voxel by voxel with the TIFF slices."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest
import tifffile

from pipeline.cli import main
from pipeline.convert import convert_dataset
from transforms.errors import DatasetError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SPACING = (0.9, 0.8, 3.0)
VECTOR_PIXEL = itk.VariableLengthVector[itk.UC]


def patient_folders(root: Path) -> list[Path]:
    return sorted(path for path in root.iterdir() if path.is_dir())


def read_tiffs(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a patient's slices with tifffile: images (N, rows, columns, 3) and masks (N, rows, columns)."""
    count = len([path for path in folder.glob("*.tif") if not path.name.endswith("_mask.tif")])
    images = np.stack([tifffile.imread(folder / f"{folder.name}_{n}.tif") for n in range(1, count + 1)])
    masks = np.stack([tifffile.imread(folder / f"{folder.name}_{n}_mask.tif") for n in range(1, count + 1)])
    return images, masks


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def copy_patients(source: Path, target: Path, count: int) -> list[Path]:
    """Copy the first ``count`` patient folders of ``source`` into ``target``/kaggle_3m."""
    root = target / "kaggle_3m"
    root.mkdir(parents=True)
    return [Path(shutil.copytree(folder, root / folder.name)) for folder in patient_folders(source)[:count]]


def read_itk_image(path: Path) -> itk.VectorImage:
    return itk.imread(str(path), pixel_type=VECTOR_PIXEL)


def check_nifti(out: Path, folder: Path, spacing: tuple[float, float, float]) -> None:
    """Compare a patient's NIfTI files with its TIFF slices: voxels, affine and header."""
    images, masks = read_tiffs(folder)
    count, rows, columns = masks.shape
    expected_affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])

    image = nib.load(out / f"{folder.name}_image.nii.gz")
    assert image.shape == (columns, rows, count, 1, 3)
    assert image.get_data_dtype() == np.uint8
    assert image.header.get_intent()[0] == "vector"
    np.testing.assert_allclose(image.affine, expected_affine, atol=1e-6)
    np.testing.assert_allclose(image.header.get_qform(), expected_affine, atol=1e-6)
    assert int(image.header["sform_code"]) == 1
    assert int(image.header["qform_code"]) == 1
    # File voxel [i, j, k, 0, c] is TIFF n = k + 1 at row j, column i, channel c.
    data = np.asanyarray(image.dataobj)
    assert np.array_equal(data[:, :, :, 0, :], images.transpose(2, 1, 0, 3))

    mask = nib.load(out / f"{folder.name}_mask.nii.gz")
    assert mask.shape == (columns, rows, count)
    assert mask.get_data_dtype() == np.uint8
    np.testing.assert_allclose(mask.affine, expected_affine, atol=1e-6)
    mask_data = np.asanyarray(mask.dataobj)
    assert set(np.unique(mask_data).tolist()) <= {0, 1}
    assert np.array_equal(mask_data, (masks != 0).transpose(2, 1, 0))


def check_nrrd(out: Path, folder: Path, spacing: tuple[float, float, float]) -> None:
    """Compare a patient's NRRD files with its TIFF slices: voxels, spacing, direction and origin."""
    images, masks = read_tiffs(folder)

    image_path = out / f"{folder.name}_image.nrrd"
    header = image_path.read_bytes().split(b"\n\n", 1)[0].decode("ascii")
    assert "space: left-posterior-superior" in header
    assert "kinds: vector domain domain domain" in header

    image = read_itk_image(image_path)
    assert image.GetNumberOfComponentsPerPixel() == 3
    # ITK arrays are indexed [k, j, i, component], which is the TIFF stack as read.
    assert np.array_equal(itk.array_from_image(image), images)
    mask = itk.imread(str(out / f"{folder.name}_mask.nrrd"))
    mask_data = itk.array_from_image(mask)
    assert mask_data.dtype == np.uint8
    assert set(np.unique(mask_data).tolist()) <= {0, 1}
    assert np.array_equal(mask_data, masks != 0)

    for volume in (image, mask):
        np.testing.assert_allclose(np.array(volume.GetSpacing()), spacing, atol=1e-6)
        np.testing.assert_allclose(np.array(volume.GetOrigin()), 0.0, atol=1e-9)
        np.testing.assert_allclose(itk.array_from_matrix(volume.GetDirection()), np.eye(3), atol=1e-9)


@pytest.fixture(scope="module")
def nifti_out(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("nifti")
    return out, convert_dataset(synthetic_data, out, "nifti", spacing=SPACING)


@pytest.fixture(scope="module")
def nrrd_out(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("nrrd")
    return out, convert_dataset(synthetic_data, out, "nrrd", spacing=SPACING)


def test_nifti_voxels_match_tiffs(synthetic_data: Path, nifti_out: tuple[Path, list[Path]]) -> None:
    out, written = nifti_out

    folders = patient_folders(synthetic_data)
    expected = [out / f"{f.name}_{kind}.nii.gz" for f in folders for kind in ("image", "mask")]
    assert written == expected
    assert sorted(path.name for path in out.iterdir()) == sorted(path.name for path in expected)
    for folder in folders:
        check_nifti(out, folder, SPACING)


def test_nrrd_voxels_match_tiffs(synthetic_data: Path, nrrd_out: tuple[Path, list[Path]]) -> None:
    out, written = nrrd_out

    folders = patient_folders(synthetic_data)
    expected = [out / f"{f.name}_{kind}.nrrd" for f in folders for kind in ("image", "mask")]
    assert written == expected
    assert sorted(path.name for path in out.iterdir()) == sorted(path.name for path in expected)
    for folder in folders:
        check_nrrd(out, folder, SPACING)


def test_nifti_and_nrrd_same_physical_points(
    synthetic_data: Path, nifti_out: tuple[Path, list[Path]], nrrd_out: tuple[Path, list[Path]]
) -> None:
    patient = patient_folders(synthetic_data)[0].name
    from_nifti = read_itk_image(nifti_out[0] / f"{patient}_image.nii.gz")
    from_nrrd = read_itk_image(nrrd_out[0] / f"{patient}_image.nrrd")
    nifti_affine = nib.load(nifti_out[0] / f"{patient}_image.nii.gz").affine

    assert np.array_equal(itk.array_from_image(from_nifti), itk.array_from_image(from_nrrd))
    for index in ((0, 0, 0), (10, 200, 3), (255, 17, 12)):
        nifti_point = np.array(from_nifti.TransformIndexToPhysicalPoint(index))
        nrrd_point = np.array(from_nrrd.TransformIndexToPhysicalPoint(index))
        np.testing.assert_allclose(nifti_point, nrrd_point, atol=1e-6)
        # nibabel's RAS point is ITK's LPS point with x and y negated.
        ras_point = (nifti_affine @ np.array([*index, 1.0]))[:3]
        np.testing.assert_allclose(ras_point * [-1, -1, 1], nrrd_point, atol=1e-6)


def test_convert_leaves_inputs_unchanged(synthetic_data: Path, tmp_path: Path) -> None:
    source = copy_patients(synthetic_data, tmp_path / "data", 1)[0].parent
    before = file_hashes(source)

    convert_dataset(source, tmp_path / "out", "nrrd")

    assert file_hashes(source) == before
    assert not [path for path in (tmp_path / "out").iterdir() if path.name.startswith(".")]


def test_convert_reads_zip_archive(synthetic_data: Path, tmp_path: Path) -> None:
    folder = patient_folders(synthetic_data)[1]
    archive = tmp_path / "data" / "archive.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(folder.iterdir()):
            handle.write(path, f"kaggle_3m/{folder.name}/{path.name}")

    convert_dataset(archive, tmp_path / "out", "nifti", spacing=SPACING)

    check_nifti(tmp_path / "out", folder, SPACING)


@pytest.mark.parametrize("fmt", ["nifti", "nrrd"])
def test_convert_rejects_output_inside_input(synthetic_data: Path, fmt: str) -> None:
    for out in (synthetic_data, synthetic_data / "converted", synthetic_data.parent / "kaggle_3m" / "a" / "b"):
        with pytest.raises(DatasetError, match="inside the input folder"):
            convert_dataset(synthetic_data, out, fmt)

    assert not (synthetic_data / "converted").exists()
    assert not (synthetic_data / "a").exists()
    assert not list(synthetic_data.glob("*.nii.gz"))
    assert not list(synthetic_data.glob("*.nrrd"))


def test_cli_output_inside_input_exits_with_2(synthetic_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = synthetic_data / "converted"

    code = main(["convert", "--data", str(synthetic_data), "--out", str(out), "--format", "nifti"])

    assert code == 2
    assert "inside the input folder" in capsys.readouterr().err
    assert not out.exists()


def test_cli_skips_broken_patients(synthetic_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, no_mask, truncated = copy_patients(synthetic_data, tmp_path / "data", 3)
    (no_mask / f"{no_mask.name}_2_mask.tif").unlink()
    broken_image = truncated / f"{truncated.name}_3.tif"
    broken_image.write_bytes(broken_image.read_bytes()[:500])
    out = tmp_path / "out"

    code = main(["convert", "--data", str(tmp_path / "data"), "--out", str(out), "--format", "nifti",
                 "--on-error", "skip"])

    assert code == 0
    printed = capsys.readouterr().out
    assert "Converted 1 patient to nifti" in printed
    assert "Skipped 2 patients" in printed
    assert f"{no_mask.name}: " in printed
    assert f"{no_mask.name}_2_mask.tif" in printed
    assert f"{truncated.name}: " in printed
    assert str(broken_image) in printed
    assert sorted(path.name for path in out.iterdir()) == [f"{good.name}_image.nii.gz", f"{good.name}_mask.nii.gz"]
    check_nifti(out, good, (1.0, 1.0, 1.0))


def test_cli_broken_patient_raises_by_default(
    synthetic_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, no_mask = copy_patients(synthetic_data, tmp_path / "data", 2)
    (no_mask / f"{no_mask.name}_2_mask.tif").unlink()

    code = main(["convert", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--format", "nrrd"])

    assert code == 2
    error = capsys.readouterr().err
    assert f"{no_mask.name}_2_mask.tif" in error
    assert "Traceback" not in error


def test_cli_all_patients_broken_exits_with_2(
    synthetic_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder,) = copy_patients(synthetic_data, tmp_path / "data", 1)
    (folder / f"{folder.name}_1_mask.tif").unlink()

    code = main(["convert", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--format", "nifti",
                 "--on-error", "skip"])

    assert code == 2
    assert "No patient" in capsys.readouterr().err


def test_cli_missing_path_exits_with_2(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_folder"

    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "convert", "--data", str(missing), "--out", str(tmp_path / "out"),
         "--format", "nifti"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )

    assert result.returncode == 2
    assert f"error: Dataset path not found: {missing}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spacing", [["1", "0", "1"], ["-1", "1", "1"], ["nan", "1", "1"]])
def test_cli_invalid_spacing_exits_with_2(
    synthetic_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], spacing: list[str]
) -> None:
    code = main(["convert", "--data", str(synthetic_data), "--out", str(tmp_path / "out"), "--format", "nrrd",
                 "--spacing", *spacing])

    assert code == 2
    assert "--spacing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["nifti", "nrrd"])
def test_invalid_settings_raise_value_error(synthetic_data: Path, tmp_path: Path, fmt: str) -> None:
    with pytest.raises(ValueError, match="spacing"):
        convert_dataset(synthetic_data, tmp_path / "out", fmt, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="on_error"):
        convert_dataset(synthetic_data, tmp_path / "out", fmt, on_error="ignore")
    with pytest.raises(ValueError, match="fmt"):
        convert_dataset(synthetic_data, tmp_path / "out", fmt.upper())


@pytest.mark.real_data
def test_real_patients_match_tiffs(real_data_dir: Path, tmp_path: Path) -> None:
    # The two patients with the fewest slices keep this test short.
    folders = sorted(patient_folders(real_data_dir), key=lambda f: (len(list(f.glob("*.tif"))), f.name))[:2]

    for folder in folders:
        convert_dataset(folder, tmp_path / "nifti", "nifti")
        convert_dataset(folder, tmp_path / "nrrd", "nrrd", spacing=SPACING)

    for folder in folders:
        check_nifti(tmp_path / "nifti", folder, (1.0, 1.0, 1.0))
        check_nrrd(tmp_path / "nrrd", folder, SPACING)
