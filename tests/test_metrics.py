"""Tests for pipeline.metrics and pipeline.postprocess on small synthetic volumes with hand-computed values."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from pipeline.metrics import patient_metrics, summarise, write_metrics_csv, write_summary
from pipeline.postprocess import ensemble_mean, flip_tta, keep_largest_component, remove_small_components


def box(shape, x, y, z, dtype=np.uint8):
    """Return a zero volume of ``shape`` with ones in the half-open ranges x, y and z."""
    volume = np.zeros(shape, dtype=dtype)
    volume[x[0] : x[1], y[0] : y[1], z[0] : z[1]] = 1
    return volume


def scipy_hd95(pred, truth, spacing=None):
    """Compute the symmetric HD95 independently of MONAI, with exact Euclidean distance transforms."""
    pred_surface = pred & ~ndimage.binary_erosion(pred)
    true_surface = truth & ~ndimage.binary_erosion(truth)
    pred_to_truth = ndimage.distance_transform_edt(~true_surface, sampling=spacing)[pred_surface]
    truth_to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[true_surface]
    return max(np.percentile(pred_to_truth, 95), np.percentile(truth_to_pred, 95))


def random_blobs(seed, shape=(32, 32, 12)):
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=shape), sigma=2.0)
    return smooth > smooth.std()


def contains_nan(value):
    if isinstance(value, dict):
        return any(contains_nan(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(contains_nan(item) for item in value)
    return isinstance(value, float) and math.isnan(value)


# Metrics


def test_dice_iou_half_overlap():
    # truth: x 0-3, y 0-3, slices 0-1 = 32 voxels. pred: x 2-5, same y and slices = 32 voxels.
    # Overlap x 2-3 = 16 voxels. Dice = 2 * 16 / (32 + 32) = 0.5, IoU = 16 / (32 + 32 - 16) = 1/3.
    truth = box((8, 8, 4), (0, 4), (0, 4), (0, 2))
    pred = box((8, 8, 4), (2, 6), (0, 4), (0, 2))

    row = patient_metrics(pred, truth)

    assert row["dice"] == pytest.approx(0.5)
    assert row["iou"] == pytest.approx(1 / 3)
    assert row["pred_volume"] == 32
    assert row["true_volume"] == 32
    assert row["volume_unit"] == "voxels"
    assert row["distance_unit"] == "px"


def test_dice_iou_with_false_positive_slice():
    # One extra predicted voxel on slice 3: |pred| = 33, overlap still 16.
    # Dice = 32 / 65, IoU = 16 / (33 + 32 - 16) = 16 / 49.
    truth = box((8, 8, 4), (0, 4), (0, 4), (0, 2))
    pred = box((8, 8, 4), (2, 6), (0, 4), (0, 2))
    pred[7, 7, 3] = 1

    row = patient_metrics(pred, truth)

    assert row["dice"] == pytest.approx(32 / 65)
    assert row["iou"] == pytest.approx(16 / 49)
    assert row["true_positive_slices"] == 2
    assert row["false_positive_slices"] == 1
    assert row["true_negative_slices"] == 1
    assert row["false_negative_slices"] == 0
    assert row["slice_sensitivity"] == 1.0
    assert row["slice_specificity"] == 0.5


def test_inputs_torch_bool_channel_first():
    truth = box((8, 8, 4), (0, 4), (0, 4), (0, 2))
    pred = box((8, 8, 4), (2, 6), (0, 4), (0, 2))
    expected = patient_metrics(pred, truth)

    from_torch = patient_metrics(torch.as_tensor(pred)[None], torch.as_tensor(truth, dtype=torch.bool)[None])
    from_float = patient_metrics(pred.astype(np.float32), truth.astype(bool))

    assert from_torch == expected
    assert from_float == expected


def test_volumes_with_spacing():
    # 32 voxels of 0.5 x 0.5 x 3.0 mm = 0.75 mm^3 each -> 24 mm^3.
    truth = box((8, 8, 4), (0, 4), (0, 4), (0, 2))
    pred = box((8, 8, 4), (0, 2), (0, 4), (0, 2))

    row = patient_metrics(pred, truth, spacing=(0.5, 0.5, 3.0))

    assert row["true_volume"] == pytest.approx(24.0)
    assert row["pred_volume"] == pytest.approx(12.0)
    assert row["volume_unit"] == "mm3"
    assert row["distance_unit"] == "mm"
    # Diagonal of 4 x 4 x 12 mm.
    assert row["image_diagonal"] == pytest.approx(math.sqrt(16 + 16 + 144))


def test_isotropic_spacing_number():
    truth = box((8, 8, 4), (0, 4), (0, 4), (0, 2))

    row = patient_metrics(truth, truth, spacing=2.0)

    assert row["true_volume"] == pytest.approx(32 * 8.0)


def test_hd95_overlapping_shifted_cubes():
    # Cube A = [2, 6)^3 and B = A shifted by +1 along x. A has 56 surface voxels (64 minus the
    # 2 x 2 x 2 interior). Its x=2 face (16 voxels) is 1 voxel from B's x=3 face, and the 4 voxels
    # (5, 3-4, 3-4) are 1 voxel from B's surface. The other 36 lie on B's surface. So 20 of 56
    # distances are 1, more than 5 %, and the 95th percentile is 1. B to A is the mirror image.
    shape = (12, 12, 12)
    cube_a = box(shape, (2, 6), (2, 6), (2, 6))
    cube_b = box(shape, (3, 7), (2, 6), (2, 6))

    assert patient_metrics(cube_b, cube_a)["hd95"] == pytest.approx(1.0)

    # With 2 mm along x, the 16 face voxels are 2 mm away. The 4 voxels (5, 3-4, 3-4) are
    # still 1 mm from B's y=2 face. 16 of 56 distances (29 %) are 2 mm, so HD95 = 2 mm.
    assert patient_metrics(cube_b, cube_a, spacing=(2.0, 1.0, 1.0))["hd95"] == pytest.approx(2.0)


def test_hd95_disjoint_shifted_cubes():
    # Cube A = [2, 4)^3, B = A shifted by +5 along x. Every voxel is on the surface. A's x=3 voxels
    # are 4 from B's x=7 voxels and A's x=2 voxels are 5 away: distances [4, 4, 4, 4, 5, 5, 5, 5].
    # The 95th percentile (linear interpolation at rank 6.65 of 0..7) is 5.
    shape = (12, 12, 12)
    cube_a = box(shape, (2, 4), (2, 4), (2, 4))
    cube_b = box(shape, (7, 9), (2, 4), (2, 4))

    assert patient_metrics(cube_b, cube_a)["hd95"] == pytest.approx(5.0)
    assert patient_metrics(cube_b, cube_a, spacing=(0.5, 1.0, 1.0))["hd95"] == pytest.approx(2.5)
    assert patient_metrics(cube_b, cube_a, spacing=(0.5, 1.0, 1.0))["dice"] == 0.0


def test_hd95_ignores_single_outlier_voxel():
    # pred = truth cube plus one voxel 10 voxels from the cube. Of pred's 57 surface distances
    # only one is non-zero, so the 95th percentile is 0 while the maximum would be 10.
    # Dice = 2 * 64 / (65 + 64) = 128 / 129.
    shape = (20, 20, 20)
    truth = box(shape, (2, 6), (2, 6), (2, 6))
    pred = truth.copy()
    pred[15, 3, 3] = 1

    row = patient_metrics(pred, truth)

    assert row["hd95"] == pytest.approx(0.0)
    assert row["dice"] == pytest.approx(128 / 129)


@pytest.mark.parametrize("spacing", [None, (0.9, 0.9, 3.3)])
def test_hd95_matches_scipy_reference(spacing):
    for seed in range(4):
        pred = random_blobs(seed)
        truth = random_blobs(seed + 100)

        expected = scipy_hd95(pred, truth, spacing)
        actual = patient_metrics(pred, truth, spacing=spacing)["hd95"]

        assert actual == pytest.approx(expected, rel=1e-5), f"seed {seed}"


def test_both_masks_empty():
    empty = np.zeros((8, 8, 4), dtype=np.uint8)

    row = patient_metrics(empty, empty)

    assert row["dice"] == 1.0
    assert row["iou"] == 1.0
    assert row["hd95"] == 0.0
    assert math.isnan(row["slice_sensitivity"])
    assert row["slice_specificity"] == 1.0
    assert row["true_negative_slices"] == 4
    assert row["pred_volume"] == 0
    assert row["true_volume"] == 0


def test_prediction_empty_truth_not():
    truth = box((8, 8, 4), (0, 4), (0, 4), (0, 2))
    empty = np.zeros_like(truth)

    row = patient_metrics(empty, truth)

    assert row["dice"] == 0.0
    assert row["iou"] == 0.0
    assert math.isnan(row["hd95"])
    assert row["slice_sensitivity"] == 0.0
    assert row["slice_specificity"] == 1.0
    assert row["false_negative_slices"] == 2
    # Diagonal of the 8 x 8 x 4 grid: sqrt(64 + 64 + 16) = 12.
    assert row["image_diagonal"] == pytest.approx(12.0)


def test_truth_empty_prediction_not():
    pred = box((8, 8, 4), (0, 2), (0, 2), (1, 2))
    empty = np.zeros_like(pred)

    row = patient_metrics(pred, empty, spacing=(1.0, 1.0, 2.0))

    assert row["dice"] == 0.0
    assert row["iou"] == 0.0
    assert math.isnan(row["hd95"])
    assert math.isnan(row["slice_sensitivity"])
    # One false-positive slice out of four tumour-free slices.
    assert row["slice_specificity"] == pytest.approx(0.75)
    assert row["image_diagonal"] == pytest.approx(math.sqrt(64 + 64 + 64))


def test_slice_sensitivity_specificity_counts():
    # truth has tumour on slices 0, 1 and 2 of 6, and pred on slices 0 and 4.
    # TP = 1 (slice 0), FN = 2 (1, 2), FP = 1 (4), TN = 2 (3, 5).
    truth = box((8, 8, 6), (2, 5), (2, 5), (0, 3))
    pred = np.zeros_like(truth)
    pred[3, 3, 0] = 1
    pred[6, 6, 4] = 1

    row = patient_metrics(pred, truth)

    assert row["true_positive_slices"] == 1
    assert row["false_negative_slices"] == 2
    assert row["false_positive_slices"] == 1
    assert row["true_negative_slices"] == 2
    assert row["slice_sensitivity"] == pytest.approx(1 / 3)
    assert row["slice_specificity"] == pytest.approx(2 / 3)


def test_slice_specificity_nan_without_negative_slices():
    truth = box((8, 8, 4), (2, 5), (2, 5), (0, 4))

    row = patient_metrics(truth, truth)

    assert row["slice_sensitivity"] == 1.0
    assert math.isnan(row["slice_specificity"])


@pytest.mark.parametrize(
    ("pred", "truth", "spacing", "message"),
    [
        (np.zeros((8, 8, 4)), np.zeros((8, 8, 5)), None, "shape"),
        (np.zeros((2, 8, 8, 4)), np.zeros((2, 8, 8, 4)), None, "expected"),
        (np.full((8, 8, 4), 0.7), np.zeros((8, 8, 4)), None, "0.7"),
        (np.zeros((8, 8, 4)), np.zeros((8, 8, 4)), (1.0, 1.0), "3"),
        (np.zeros((8, 8, 4)), np.zeros((8, 8, 4)), (1.0, 0.0, 1.0), "positive"),
    ],
)
def test_patient_metrics_invalid_input(pred, truth, spacing, message):
    with pytest.raises(ValueError, match=message):
        patient_metrics(pred, truth, spacing=spacing)


# Summary and files


def make_rows():
    truth = box((8, 8, 4), (0, 4), (0, 4), (0, 2))
    half = box((8, 8, 4), (2, 6), (0, 4), (0, 2))
    empty = np.zeros_like(truth)
    return [
        {"patient": "TCGA_A", **patient_metrics(half, truth)},
        {"patient": "TCGA_B", **patient_metrics(truth, truth)},
        {"patient": "TCGA_C", **patient_metrics(empty, truth)},
        {"patient": "TCGA_D", **patient_metrics(empty, empty)},
    ]


def test_summarise_statistics_and_exclusions():
    rows = make_rows()

    summary = summarise(rows)
    metrics = summary["metrics"]

    assert summary["n_patients"] == 4
    # Dice values 0.5, 1, 0, 1.
    assert metrics["dice"]["mean"] == pytest.approx(0.625)
    assert metrics["dice"]["median"] == pytest.approx(0.75)
    assert metrics["dice"]["min"] == 0.0
    assert metrics["dice"]["max"] == 1.0
    assert metrics["dice"]["std"] == pytest.approx(np.std([0.5, 1.0, 0.0, 1.0]))
    assert metrics["dice"]["n"] == 4
    assert metrics["dice"]["n_excluded"] == 0
    # Slice sensitivity is NaN for TCGA_D (no tumour slices): values 1, 1, 0.
    assert metrics["slice_sensitivity"]["n"] == 3
    assert metrics["slice_sensitivity"]["n_excluded"] == 1
    assert metrics["slice_sensitivity"]["mean"] == pytest.approx(2 / 3)
    # HD95: A = 2 (x 0-3 against x 2-5), B = 0, C = NaN -> diagonal 12, D = 0.
    assert rows[0]["hd95"] == pytest.approx(2.0)
    assert metrics["hd95_px"]["n_worst_case"] == 1
    assert metrics["hd95_px"]["n_excluded"] == 0
    assert metrics["hd95_px"]["n"] == 4
    assert metrics["hd95_px"]["max"] == pytest.approx(12.0)
    assert metrics["hd95_px"]["mean"] == pytest.approx((2.0 + 0.0 + 12.0 + 0.0) / 4)
    assert "pred_volume_voxels" in metrics
    assert "patient" not in metrics
    assert "image_diagonal_px" not in metrics
    assert not contains_nan(summary)


def test_summarise_never_returns_nan():
    rows = [{"dice": math.nan, "hd95": math.nan, "slice_sensitivity": None}, {"dice": math.nan}]

    summary = summarise(rows)

    assert not contains_nan(summary)
    assert summary["metrics"]["dice"]["n"] == 0
    assert summary["metrics"]["dice"]["n_excluded"] == 2
    assert summary["metrics"]["dice"]["mean"] is None
    # Without image_diagonal an HD95 of NaN can only be excluded.
    assert summary["metrics"]["hd95_px"]["n_excluded"] == 2
    assert summary["metrics"]["hd95_px"]["n_worst_case"] == 0


def test_summarise_empty_rows():
    assert summarise([]) == {"n_patients": 0, "metrics": {}}


def test_summarise_rejects_mixed_units(tmp_path):
    truth = box((8, 8, 4), (0, 4), (0, 4), (0, 2))
    rows = [patient_metrics(truth, truth), patient_metrics(truth, truth, spacing=1.0)]

    with pytest.raises(ValueError, match="mix units"):
        summarise(rows)
    with pytest.raises(ValueError, match="mix units"):
        write_metrics_csv(rows, tmp_path / "metrics.csv")


def test_metrics_csv_read_back(tmp_path):
    rows = make_rows()

    path = write_metrics_csv(rows, tmp_path / "reports" / "metrics.csv")

    with open(path, newline="") as file:
        read = list(csv.DictReader(file))
    assert list(read[0]) == [
        "patient",
        "dice",
        "iou",
        "hd95_px",
        "pred_volume_voxels",
        "true_volume_voxels",
        "slice_sensitivity",
        "slice_specificity",
        "true_positive_slices",
        "false_negative_slices",
        "true_negative_slices",
        "false_positive_slices",
        "image_diagonal_px",
    ]
    assert [line["patient"] for line in read] == ["TCGA_A", "TCGA_B", "TCGA_C", "TCGA_D"]
    for row, line in zip(rows, read):
        assert float(line["dice"]) == row["dice"]
        assert float(line["iou"]) == row["iou"]
        assert int(line["true_positive_slices"]) == row["true_positive_slices"]
        assert int(line["pred_volume_voxels"]) == row["pred_volume"]
    assert read[2]["hd95_px"] == "nan"
    assert read[3]["slice_sensitivity"] == "nan"
    assert list(tmp_path.joinpath("reports").iterdir()) == [path]


def test_metrics_csv_units_with_spacing(tmp_path):
    truth = box((8, 8, 4), (0, 4), (0, 4), (0, 2))
    rows = [{"patient": "TCGA_A", **patient_metrics(truth, truth, spacing=(0.5, 0.5, 2.0))}]

    path = write_metrics_csv(rows, tmp_path / "metrics.csv")

    with open(path, newline="") as file:
        read = list(csv.DictReader(file))
    assert "hd95_mm" in read[0]
    assert float(read[0]["pred_volume_mm3"]) == pytest.approx(16.0)
    assert float(read[0]["true_volume_mm3"]) == pytest.approx(16.0)


def test_metrics_csv_rejects_no_rows(tmp_path):
    with pytest.raises(ValueError, match="No metric rows"):
        write_metrics_csv([], tmp_path / "metrics.csv")


def test_summary_json_read_back(tmp_path):
    summary = summarise(make_rows())

    path = write_summary(summary, tmp_path / "summary.json")

    assert json.loads(path.read_text()) == summary
    assert "NaN" not in path.read_text()


def test_summary_json_rejects_nan(tmp_path):
    with pytest.raises(ValueError):
        write_summary({"metrics": {"dice": {"mean": math.nan}}}, tmp_path / "summary.json")
    assert not (tmp_path / "summary.json").exists()


# Post-processing


def two_blobs():
    """Return a 12 x 12 x 6 mask with a 3 x 3 x 3 blob (27 voxels) and a 2 x 2 x 2 blob (8 voxels)."""
    mask = box((12, 12, 6), (1, 4), (1, 4), (1, 4))
    mask[7:9, 7:9, 2:4] = 1
    return mask


def scipy_largest_component(mask, structure):
    labels, count = ndimage.label(mask, structure=structure)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


def test_keep_largest_two_blobs():
    mask = two_blobs()
    expected = box((12, 12, 6), (1, 4), (1, 4), (1, 4))

    largest = keep_largest_component(mask)

    assert isinstance(largest, np.ndarray)
    assert largest.dtype == mask.dtype
    np.testing.assert_array_equal(largest, expected)


def test_keep_largest_torch_channel_first():
    mask = torch.as_tensor(two_blobs(), dtype=torch.float32)[None]

    largest = keep_largest_component(mask)

    assert isinstance(largest, torch.Tensor)
    assert largest.shape == mask.shape
    assert largest.dtype == torch.float32
    assert largest.sum().item() == 27


def test_keep_largest_connectivity():
    # Two 2 x 2 x 2 cubes (8 voxels) touching corner to corner, plus a 3 x 3 x 1 plate (9 voxels).
    # With 26-connectivity the cubes form one 16-voxel component, with 6-connectivity the plate wins.
    mask = box((12, 12, 6), (0, 2), (0, 2), (0, 2))
    mask[2:4, 2:4, 2:4] = 1
    mask[8:11, 8:11, 5] = 1

    assert keep_largest_component(mask, connectivity=26).sum() == 16
    assert keep_largest_component(mask, connectivity=6).sum() == 9
    with pytest.raises(ValueError, match="connectivity"):
        keep_largest_component(mask, connectivity=4)


@pytest.mark.parametrize(("connectivity", "steps"), [(6, 1), (18, 2), (26, 3)])
def test_keep_largest_matches_scipy(connectivity, steps):
    structure = ndimage.generate_binary_structure(3, steps)
    for seed in range(3):
        mask = random_blobs(seed, shape=(24, 24, 8))

        expected = scipy_largest_component(mask, structure)

        np.testing.assert_array_equal(keep_largest_component(mask, connectivity=connectivity), expected)


def test_keep_largest_empty_mask():
    empty = np.zeros((8, 8, 4), dtype=np.uint8)

    assert keep_largest_component(empty).sum() == 0


def test_remove_small_components():
    # Blob of 27 voxels, blob of 8 voxels, and two single voxels touching at a corner.
    mask = two_blobs()
    mask[10, 1, 0] = 1
    mask[11, 2, 1] = 1

    # 26-connectivity joins the corner pair into a component of 2.
    assert remove_small_components(mask, min_voxels=2).sum() == 27 + 8 + 2
    assert remove_small_components(mask, min_voxels=3).sum() == 27 + 8
    assert remove_small_components(mask, min_voxels=2, connectivity=6).sum() == 27 + 8
    # A component of exactly min_voxels voxels is kept.
    assert remove_small_components(mask, min_voxels=8).sum() == 27 + 8
    assert remove_small_components(mask, min_voxels=9).sum() == 27
    assert remove_small_components(mask, min_voxels=28).sum() == 0
    assert remove_small_components(mask, min_voxels=0).sum() == mask.sum()


def test_remove_small_components_torch():
    mask = torch.as_tensor(two_blobs(), dtype=torch.bool)[None]

    filtered = remove_small_components(mask, min_voxels=10)

    assert isinstance(filtered, torch.Tensor)
    assert filtered.dtype == torch.bool
    assert filtered.shape == mask.shape
    assert filtered.sum().item() == 27
    with pytest.raises(ValueError, match="min_voxels"):
        remove_small_components(mask, min_voxels=-1)


def voxelwise_softmax(image):
    """Return two-class probabilities computed voxel by voxel, so flipping commutes with it."""
    logits = torch.cat([image[:, :1] * 2.0 - image[:, 1:], image[:, 1:] - 0.5], dim=1)
    return torch.softmax(logits, dim=1)


def test_flip_tta_equivariant_function():
    image = torch.randn(1, 2, 8, 8, 4, generator=torch.Generator().manual_seed(0))

    averaged = flip_tta(voxelwise_softmax, image)

    torch.testing.assert_close(averaged, voxelwise_softmax(image))


def test_flip_tta_asymmetric_function():
    # predict_fn ignores the image and returns probabilities that ramp from 0 to 1 along x.
    # The ramp flipped back is 1 - ramp, so the mean over both is 0.5 everywhere.
    ramp = torch.linspace(0.0, 1.0, 8).reshape(1, 1, 8, 1, 1).expand(1, 1, 8, 8, 4)
    probabilities = torch.cat([1.0 - ramp, ramp], dim=1)
    image = torch.zeros(1, 1, 8, 8, 4)

    averaged = flip_tta(lambda _: probabilities, image)

    torch.testing.assert_close(averaged, torch.full((1, 2, 8, 8, 4), 0.5))


def test_flip_tta_average_of_flipped_predictions():
    # A function that depends on position: the mean equals (f(x) + flip(f(flip(x)))) / 2.
    position = torch.arange(8.0).reshape(1, 1, 8, 1, 1)

    def predict(image):
        return torch.softmax(torch.cat([image, image * position / 7.0], dim=1), dim=1)

    image = torch.randn(2, 1, 8, 8, 4, generator=torch.Generator().manual_seed(1))
    expected = (predict(image) + torch.flip(predict(torch.flip(image, [2])), [2])) / 2

    averaged = flip_tta(predict, image)

    torch.testing.assert_close(averaged, expected)
    assert not torch.allclose(averaged, predict(image))


def test_flip_tta_numpy_two_flips_2d():
    image = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)

    # With an identity predict_fn, each flipped prediction flips back to the image itself,
    # so the mean over no flip, an x flip and an x-y flip is the image.
    averaged = flip_tta(lambda x: x, image, flips=((0,), (0, 1)), spatial_dims=2)

    np.testing.assert_allclose(averaged, image)
    with pytest.raises(ValueError, match="Invalid flip"):
        flip_tta(lambda x: x, image, flips=((2,),), spatial_dims=2)


def test_ensemble_mean():
    first = torch.tensor([[0.2, 0.8], [1.0, 0.0]])
    second = torch.tensor([[0.4, 0.6], [0.0, 1.0]])

    torch.testing.assert_close(ensemble_mean([first, second]), torch.tensor([[0.3, 0.7], [0.5, 0.5]]))
    np.testing.assert_allclose(ensemble_mean([first.numpy(), second.numpy()]), [[0.3, 0.7], [0.5, 0.5]])
    np.testing.assert_allclose(ensemble_mean([first.numpy()]), first.numpy())


def test_ensemble_mean_invalid_input():
    first = torch.zeros(2, 2)

    with pytest.raises(ValueError, match="empty"):
        ensemble_mean([])
    with pytest.raises(ValueError, match="shape"):
        ensemble_mean([first, torch.zeros(2, 3)])
    with pytest.raises(TypeError, match="numpy"):
        ensemble_mean([first, np.zeros((2, 2))])
