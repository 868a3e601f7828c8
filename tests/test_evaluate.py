"""Tests for the ``evaluate`` command and the ensemble network: reports against the input masks, options, errors."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from pipeline.cli import main
from pipeline.ensemble import EnsembleNetwork, build_inference_network

# Overrides that train a network in seconds on 64x64 synthetic slices, and evaluate it on whole slices.
SMALL = ["--set", "roi_size=[64,64]"]
SUMMARY_METRICS = ("dice", "iou", "hd95_px", "slice_sensitivity", "slice_specificity")


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def reject_nan(text: str) -> None:
    raise AssertionError(f"summary.json contains {text}")


def true_voxels(patient_folder: Path) -> int:
    return sum(int(np.count_nonzero(tifffile.imread(path))) for path in patient_folder.glob("*_mask.tif"))


def test_cli_writes_reports(small_synthetic_data: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "evaluate", "--data", str(small_synthetic_data), "--out", str(out),
         "--checkpoint", str(checkpoint), *SMALL],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    rows = read_rows(out / "patient_metrics.csv")
    patients = sorted(path.name for path in small_synthetic_data.iterdir() if path.is_dir())
    assert [row["patient"] for row in rows] == patients
    for column in (*SUMMARY_METRICS, "pred_volume_voxels", "true_volume_voxels"):
        assert column in rows[0], column
    for row in rows:
        dice, iou = float(row["dice"]), float(row["iou"])
        assert 0.0 <= dice <= 1.0
        assert dice == pytest.approx(2 * iou / (1 + iou))
        assert int(row["true_volume_voxels"]) == true_voxels(small_synthetic_data / row["patient"])

    summary = json.loads((out / "summary.json").read_text(), parse_constant=reject_nan)
    assert summary["n_patients"] == len(patients)
    for name in SUMMARY_METRICS:
        statistics = summary["metrics"][name]
        for key in ("mean", "median", "std"):
            assert statistics[key] is not None and math.isfinite(statistics[key]), (name, key)
    dice_values = [float(row["dice"]) for row in rows]
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(np.mean(dice_values))
    assert summary["metrics"]["dice"]["median"] == pytest.approx(np.median(dice_values))

    table = result.stdout.splitlines()
    assert any(line.startswith("dice") for line in table)
    assert any(line.startswith("hd95_px") for line in table)
    assert f"Per-patient metrics: {out / 'patient_metrics.csv'}" in table
    assert (out / "val_hd95_px_raw.csv").is_file()
    assert (out / "config.json").is_file()


def test_spacing_gives_mm(small_synthetic_data: Path, checkpoint: Path, tmp_path: Path) -> None:
    pixels, millimetres = tmp_path / "px", tmp_path / "mm"
    common = ["--data", str(small_synthetic_data), "--checkpoint", str(checkpoint), *SMALL]
    assert main(["evaluate", *common, "--out", str(pixels)]) == 0
    assert main(["evaluate", *common, "--out", str(millimetres), "--spacing", "0.5", "0.5", "2"]) == 0

    for row_px, row_mm in zip(read_rows(pixels / "patient_metrics.csv"), read_rows(millimetres / "patient_metrics.csv")):
        assert "hd95_mm" in row_mm
        assert "hd95_px" not in row_mm
        assert float(row_mm["dice"]) == pytest.approx(float(row_px["dice"]))
        assert float(row_mm["true_volume_mm3"]) == pytest.approx(int(row_px["true_volume_voxels"]) * 0.5)
        assert float(row_mm["pred_volume_mm3"]) == pytest.approx(int(row_px["pred_volume_voxels"]) * 0.5)
    summary = json.loads((millimetres / "summary.json").read_text())
    assert "hd95_mm" in summary["metrics"]


def test_postprocessing_options_shrink_prediction(small_synthetic_data: Path, checkpoint: Path, tmp_path: Path) -> None:
    common = ["--data", str(small_synthetic_data), "--checkpoint", str(checkpoint), *SMALL]
    assert main(["evaluate", *common, "--out", str(tmp_path / "plain"), "--no-largest-component"]) == 0
    assert main(["evaluate", *common, "--out", str(tmp_path / "largest"), "--largest-component"]) == 0
    assert main(["evaluate", *common, "--out", str(tmp_path / "sized"), "--min-component-voxels", "30"]) == 0

    plain = {row["patient"]: int(row["pred_volume_voxels"]) for row in read_rows(tmp_path / "plain" / "patient_metrics.csv")}
    for name in ("largest", "sized"):
        for row in read_rows(tmp_path / name / "patient_metrics.csv"):
            assert int(row["pred_volume_voxels"]) <= plain[row["patient"]], (name, row["patient"])
    config = json.loads((tmp_path / "largest" / "config.json").read_text())
    assert config["largest_component"] is True
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["largest_component"] is False
    assert config["flip_tta"] is False


def test_ensemble_of_one_model_matches_plain(small_synthetic_data: Path, checkpoint: Path, tmp_path: Path) -> None:
    common = ["--data", str(small_synthetic_data), *SMALL]
    assert main(["evaluate", *common, "--out", str(tmp_path / "plain"), "--checkpoint", str(checkpoint)]) == 0
    assert main(["evaluate", *common, "--out", str(tmp_path / "pair"),
                 "--checkpoint", str(checkpoint), "--checkpoint", str(checkpoint)]) == 0
    assert main(["evaluate", *common, "--out", str(tmp_path / "tta"), "--checkpoint", str(checkpoint), "--flip-tta"]) == 0

    plain = read_rows(tmp_path / "plain" / "patient_metrics.csv")
    pair = read_rows(tmp_path / "pair" / "patient_metrics.csv")
    for row_plain, row_pair in zip(plain, pair):
        assert float(row_pair["dice"]) == pytest.approx(float(row_plain["dice"]), abs=1e-3)
    config = json.loads((tmp_path / "pair" / "config.json").read_text())
    assert config["ensemble_checkpoints"] == [str(checkpoint.resolve())]
    assert len(read_rows(tmp_path / "tta" / "patient_metrics.csv")) == len(plain)


def test_datalist_fold_evaluates_its_patients(small_synthetic_data: Path, checkpoint: Path, tmp_path: Path) -> None:
    datalist = tmp_path / "datalist.json"
    assert main(["split", "--data", str(small_synthetic_data), "--folds", "2", "--out", str(datalist)]) == 0
    expected = sorted(e["patient"] for e in json.loads(datalist.read_text())["training"] if e["fold"] == 1)

    out = tmp_path / "fold1"
    assert main(["evaluate", "--data", str(small_synthetic_data), "--datalist", str(datalist), "--fold", "1",
                 "--checkpoint", str(checkpoint), "--out", str(out), *SMALL]) == 0
    assert [row["patient"] for row in read_rows(out / "patient_metrics.csv")] == expected


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--fold", "1"], "--fold needs --datalist"),
        (["--min-component-voxels", "-1"], "--min-component-voxels must be 0 or more"),
        (["--spacing", "1", "0", "1"], "--spacing needs three positive values"),
        (["--set", "largest_componnt=true"], "Unknown config key 'largest_componnt'"),
    ],
)
def test_cli_rejects_bad_options(
    small_synthetic_data: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str],
    message: str,
) -> None:
    code = main(["evaluate", "--data", str(small_synthetic_data), "--out", str(tmp_path / "eval"),
                 "--checkpoint", str(checkpoint), *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_cli_rejects_missing_inputs(small_synthetic_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", "--data", str(small_synthetic_data), "--out", str(tmp_path / "a"),
                 "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "Checkpoint not found" in capsys.readouterr().err

    assert main(["evaluate", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "b")]) == 2
    assert "Dataset folder not found" in capsys.readouterr().err

    inside = small_synthetic_data / "evaluation"
    assert main(["evaluate", "--data", str(small_synthetic_data), "--out", str(inside)]) == 2
    assert "inside the input folder" in capsys.readouterr().err
    assert not inside.exists()


class Doubler(torch.nn.Module):
    """A fixed two-class network whose tumour logit is twice the first input channel."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(image[:, :1]), 2 * image[:, :1]], dim=1)


def test_ensemble_network_averages_probabilities() -> None:
    torch.manual_seed(0)
    image = torch.randn(2, 3, 8, 6)
    network = Doubler()
    expected = torch.softmax(network(image), dim=1)

    single = torch.softmax(EnsembleNetwork([network])(image), dim=1)
    assert torch.allclose(single, expected, atol=1e-6)

    mirrored = torch.softmax(network(image.flip(2)), dim=1).flip(2)
    with_flip = torch.softmax(EnsembleNetwork([network], flip_axes=[0])(image), dim=1)
    assert torch.allclose(with_flip, (expected + mirrored) / 2, atol=1e-6)


def test_inference_network_is_plain_without_options() -> None:
    network = Doubler()
    assert build_inference_network(network) is network
    assert isinstance(build_inference_network(network, flip_tta=True), EnsembleNetwork)
