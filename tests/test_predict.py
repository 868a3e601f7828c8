"""Tests for the ``predict`` command: masks against an in-memory prediction, orientation, NIfTI input, reruns."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from matplotlib.image import imread
from monai.bundle import ConfigParser
from monai.inferers import SliceInferer
from monai.transforms import NormalizeIntensity
from scipy import ndimage

from pipeline.cli import main

REPO = Path(__file__).resolve().parent.parent
INFERENCE_CONFIG = REPO / "bundles" / "lgg_mri_segmentation" / "configs" / "inference.json"
SMALL = ["--set", "roi_size=[64,64]"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def predictions(small_synthetic_data: Path, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The predict output folder for every patient of the small synthetic dataset. Read-only for tests."""
    out = tmp_path_factory.mktemp("predictions") / "out"
    # The raw network output, without the default largest-component step, so tests can recompute it.
    code = main(["predict", "--data", str(small_synthetic_data), "--out", str(out), "--checkpoint", str(checkpoint),
                 "--no-largest-component", *SMALL])
    assert code == 0
    return out


def patients_of(data: Path) -> list[Path]:
    return sorted(path for path in data.iterdir() if path.is_dir())


def slice_count(patient: Path) -> int:
    return sum(1 for path in patient.glob("*.tif") if not path.name.endswith("_mask.tif"))


def read_tiff_masks(folder: Path, patient: str, slices: int) -> np.ndarray:
    """Stack ``<patient>_<n>_mask.tif`` for n = 1..slices as ``(slices, rows, columns)`` uint8."""
    return np.stack([tifffile.imread(folder / f"{patient}_{n}_mask.tif") for n in range(1, slices + 1)])


def predict_in_memory(patient: Path, checkpoint: Path) -> np.ndarray:
    """Predict one patient straight from its TIFF files, and return the mask as ``(slices, rows, columns)``.

    The image is assembled here from the raw TIFF arrays, not with transforms.io, so the
    comparison also checks the orientation of what the command writes.
    """
    parser = ConfigParser()
    parser.read_config(str(INFERENCE_CONFIG))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    network.eval()

    name = patient.name
    tiffs = [tifffile.imread(patient / f"{name}_{n}.tif") for n in range(1, slice_count(patient) + 1)]
    # tiff[row, column, channel] -> volume[channel, column, row, slice]
    volume = torch.from_numpy(np.stack([t.transpose(2, 1, 0) for t in tiffs], axis=-1).astype(np.float32))
    volume = NormalizeIntensity(nonzero=True, channel_wise=True)(volume)
    inferer = SliceInferer(roi_size=(64, 64), sw_batch_size=16, spatial_dim=2)
    with torch.no_grad():
        logits = inferer(volume[None], network)
    mask = logits.argmax(dim=1)[0].numpy().astype(np.uint8)
    return mask.transpose(2, 1, 0)


def test_masks_match_in_memory_prediction(small_synthetic_data: Path, checkpoint: Path, predictions: Path) -> None:
    for patient in patients_of(small_synthetic_data):
        name, slices = patient.name, slice_count(patient)
        expected = predict_in_memory(patient, checkpoint)

        masks = read_tiff_masks(predictions / name, name, slices)
        assert masks.dtype == np.uint8
        assert set(np.unique(masks).tolist()) <= {0, 255}
        assert masks.shape == (slices, *tifffile.imread(patient / f"{name}_1.tif").shape[:2])
        assert np.array_equal(masks, expected * 255), name

        nifti = nib.load(predictions / name / f"{name}_mask.nii.gz")
        assert nifti.get_data_dtype() == np.uint8
        volume = np.asarray(nifti.dataobj)
        assert volume.shape == (masks.shape[2], masks.shape[1], slices)
        assert np.array_equal(volume.transpose(2, 1, 0), expected), name


def test_predictions_csv_counts_tiff_pixels(small_synthetic_data: Path, predictions: Path) -> None:
    with (predictions / "predictions.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["patient"] for row in rows] == [patient.name for patient in patients_of(small_synthetic_data)]
    assert list(rows[0]) == ["patient", "slices", "tumour_slices", "tumour_pixels", "tumour_volume_voxels"]
    for row, patient in zip(rows, patients_of(small_synthetic_data)):
        masks = read_tiff_masks(predictions / patient.name, patient.name, slice_count(patient)) > 0
        assert int(row["slices"]) == slice_count(patient)
        assert int(row["tumour_slices"]) == int(masks.any(axis=(1, 2)).sum())
        assert int(row["tumour_pixels"]) == int(masks.sum())
        assert int(row["tumour_volume_voxels"]) == int(masks.sum())


def test_overlays_show_prediction_and_truth(small_synthetic_data: Path, predictions: Path) -> None:
    for patient in patients_of(small_synthetic_data):
        name, slices = patient.name, slice_count(patient)
        predicted = read_tiff_masks(predictions / name, name, slices) > 0
        truth = read_tiff_masks(patient, name, slices) > 0
        expected = {n for n in range(1, slices + 1) if predicted[n - 1].any() or truth[n - 1].any()}
        written = {int(path.name.split("_")[-2]) for path in (predictions / name / "overlays").glob("*_overlay.png")}
        assert written == expected, name

        for number in sorted(written):
            path = predictions / name / "overlays" / f"{name}_{number}_overlay.png"
            assert path.read_bytes()[:8] == PNG_SIGNATURE
            pixels = (imread(path)[..., :3] * 255).round().astype(np.uint8)
            assert pixels.shape == (*predicted.shape[1:], 3)
            red = (pixels[..., 0] == 255) & (pixels[..., 1] <= 77) & (pixels[..., 2] <= 77)
            green = (pixels[..., 1] == 255) & (pixels[..., 0] <= 77) & (pixels[..., 2] <= 77)
            assert predicted[number - 1][red].all(), (name, number)
            assert truth[number - 1][green].all(), (name, number)
            assert red.any() == predicted[number - 1].any(), (name, number)


def test_dice_from_tiffs_matches_evaluate(small_synthetic_data: Path, checkpoint: Path, predictions: Path,
                                          tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(small_synthetic_data), "--out", str(out), "--checkpoint", str(checkpoint),
                 "--no-largest-component", *SMALL]) == 0
    with (out / "patient_metrics.csv").open(newline="") as file:
        reported = {row["patient"]: float(row["dice"]) for row in csv.DictReader(file)}

    for patient in patients_of(small_synthetic_data):
        name, slices = patient.name, slice_count(patient)
        predicted = read_tiff_masks(predictions / name, name, slices) > 0
        truth = read_tiff_masks(patient, name, slices) > 0
        total = predicted.sum() + truth.sum()
        dice = 1.0 if total == 0 else 2 * np.logical_and(predicted, truth).sum() / total
        assert dice == pytest.approx(reported[name], abs=1e-9), name


def test_rerun_replaces_only_own_files(small_synthetic_data: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first, second = patients_of(small_synthetic_data)[:2]
    common = ["--checkpoint", str(checkpoint), "--out", str(out), *SMALL]
    assert main(["predict", "--data", str(small_synthetic_data), *common]) == 0
    first_run = set(json.loads((out / "manifest.json").read_text())["files"])
    assert {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()} == first_run | {"manifest.json"}

    keep = [out / "notes.txt", out / first.name / "my_notes.txt", out / second.name / "overlays" / "mine.png"]
    for path in keep:
        path.write_text("not written by predict")

    assert main(["predict", "--data", str(first), *common]) == 0
    second_run = set(json.loads((out / "manifest.json").read_text())["files"])
    assert all(name.startswith((f"{first.name}/", "predictions.csv", "config.json")) for name in second_run)
    for path in keep:
        assert path.read_text() == "not written by predict"
    left = {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}
    assert left == second_run | {"manifest.json"} | {path.relative_to(out).as_posix() for path in keep}
    assert not (out / patients_of(small_synthetic_data)[2].name).exists()
    assert not list(out.glob(".predict-staging-*"))


def test_foreign_file_stops_before_writing(small_synthetic_data: Path, checkpoint: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    patient = patients_of(small_synthetic_data)[0]
    out = tmp_path / "out"
    foreign = out / patient.name / f"{patient.name}_1_mask.tif"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"someone else's file")

    code = main(["predict", "--data", str(patient), "--out", str(out), "--checkpoint", str(checkpoint), *SMALL])
    assert code == 2
    assert "did not write" in capsys.readouterr().err
    assert foreign.read_bytes() == b"someone else's file"
    assert sorted(path.name for path in out.rglob("*")) == [patient.name, foreign.name]


def test_output_inside_input_rejected(small_synthetic_data: Path, checkpoint: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    patient = patients_of(small_synthetic_data)[0]
    before = sorted(small_synthetic_data.rglob("*"))
    for out in (small_synthetic_data, small_synthetic_data / "predictions", patient):
        code = main(["predict", "--data", str(small_synthetic_data), "--out", str(out), "--checkpoint",
                     str(checkpoint), *SMALL])
        assert code == 2
        assert "inside the input folder" in capsys.readouterr().err
    assert sorted(small_synthetic_data.rglob("*")) == before


def test_nifti_input_matches_tiff_input(small_synthetic_data: Path, checkpoint: Path, predictions: Path,
                                        tmp_path: Path) -> None:
    patient = patients_of(small_synthetic_data)[0]
    single = tmp_path / "single" / patient.name
    shutil.copytree(patient, single)
    converted = tmp_path / "nifti"
    assert main(["convert", "--data", str(single.parent), "--out", str(converted), "--format", "nifti"]) == 0
    vector_file = converted / f"{patient.name}_image.nii.gz"

    # The same image as a 4D (x, y, slices, 3) volume, without a mask beside it.
    vector = nib.load(vector_file)
    plain_folder = tmp_path / "plain"
    plain_folder.mkdir()
    plain_file = plain_folder / "volume.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(vector.dataobj)[:, :, :, 0, :], vector.affine), plain_file)

    slices = slice_count(patient)
    expected = read_tiff_masks(predictions / patient.name, patient.name, slices)
    for source, name in ((vector_file, patient.name), (plain_file, "volume")):
        out = tmp_path / f"out_{name}"
        assert main(["predict", "--data", str(source), "--out", str(out), "--checkpoint", str(checkpoint),
                     "--no-largest-component", *SMALL]) == 0
        assert np.array_equal(read_tiff_masks(out / name, name, slices), expected), source.name

        mask = nib.load(out / name / f"{name}_mask.nii.gz")
        assert np.allclose(mask.affine, vector.affine)
        assert np.array_equal(np.asarray(mask.dataobj), expected.transpose(2, 1, 0) // 255)

    # Only the converted file has its mask beside it, so only its overlays can show the ground truth.
    truth = read_tiff_masks(patient, patient.name, slices) > 0
    tumour_only_in_truth = [n + 1 for n in range(slices) if truth[n].any() and not expected[n].any()]
    overlays_vector = {p.name for p in (tmp_path / f"out_{patient.name}" / patient.name / "overlays").iterdir()}
    for number in tumour_only_in_truth:
        assert f"{patient.name}_{number}_overlay.png" in overlays_vector


def test_nifti_input_rejects_wrong_shape(tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "in" / "grey.nii.gz"
    source.parent.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), dtype=np.uint8), np.eye(4)), source)
    code = main(["predict", "--data", str(source), "--out", str(tmp_path / "out"), "--checkpoint", str(checkpoint)])
    assert code == 2
    assert "needs (x, y, slices, 3)" in capsys.readouterr().err


def test_component_options_filter_masks(small_synthetic_data: Path, checkpoint: Path, tmp_path: Path) -> None:
    common = ["--data", str(small_synthetic_data), "--checkpoint", str(checkpoint), "--no-overlays", *SMALL]
    assert main(["predict", *common, "--out", str(tmp_path / "largest"), "--largest-component"]) == 0
    assert main(["predict", *common, "--out", str(tmp_path / "sized"), "--min-component-voxels", "30"]) == 0

    full = ndimage.generate_binary_structure(3, 3)
    for patient in patients_of(small_synthetic_data):
        name = patient.name
        largest = np.asarray(nib.load(tmp_path / "largest" / name / f"{name}_mask.nii.gz").dataobj)
        assert ndimage.label(largest, structure=full)[1] <= 1, name

        sized = np.asarray(nib.load(tmp_path / "sized" / name / f"{name}_mask.nii.gz").dataobj)
        labels, count = ndimage.label(sized, structure=full)
        assert all(size >= 30 for size in np.bincount(labels.ravel())[1:]), name
        assert not list((tmp_path / "sized" / name).glob("overlays"))
