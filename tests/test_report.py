"""Tests for the ``report`` command: TensorBoard scalars, figure files and sizes, and the HTML page."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from torch.utils.tensorboard import SummaryWriter

from pipeline.cli import main
from pipeline.report import FIGURE_SIZES, INDEX_FILE, LEARNING_CURVES_FILE, PATIENT_DICE_FILE, SAMPLES_FILE, read_scalars

SMALL = ["--set", "roi_size=[64,64]"]
TRAIN_SMALL = [*SMALL, "--set", "patch_size=[64,64,1]", "--set", "num_workers=0", "--set", "val_interval=1"]
EPOCHS = 3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def finished_run(small_synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 3-epoch training run with its evaluation and predictions on the small synthetic dataset."""
    root = tmp_path_factory.mktemp("report_run")
    run_dir, evaluation, predictions = root / "run", root / "eval", root / "predictions"
    data = str(small_synthetic_data)
    assert main(["train", "--data", data, "--out", str(run_dir), "--epochs", str(EPOCHS), *TRAIN_SMALL]) == 0
    checkpoint = str(run_dir / "checkpoints" / "model.pt")
    assert main(["evaluate", "--data", data, "--out", str(evaluation), "--checkpoint", checkpoint, *SMALL]) == 0
    assert main(["predict", "--data", data, "--out", str(predictions), "--checkpoint", checkpoint, *SMALL]) == 0
    return {"run": run_dir, "eval": evaluation, "predictions": predictions}


def check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path.name
    pixels = imread(path)
    width, height = FIGURE_SIZES[path.name]
    assert pixels.shape[:2] == (height, width), path.name
    assert pixels.std() > 0.05, f"{path.name} is blank"


def test_read_scalars_counts_steps(finished_run: dict[str, Path]) -> None:
    scalars = read_scalars(finished_run["run"] / "tensorboard")
    assert [step for step, _ in scalars["val_mean_dice"]] == list(range(1, EPOCHS + 1))
    assert [step for step, _ in scalars["val_mean_iou"]] == list(range(1, EPOCHS + 1))
    assert [step for step, _ in scalars["learning_rate"]] == list(range(1, EPOCHS + 1))
    # 4 training patients in batches of 2 give 2 iterations per epoch.
    assert [step for step, _ in scalars["train_loss"]] == list(range(1, 2 * EPOCHS + 1))
    assert all(0.0 <= value <= 1.0 for _, value in scalars["val_mean_dice"])


def test_read_scalars_keeps_later_duplicate(tmp_path: Path) -> None:
    for values in ((1.0, 2.0, 3.0), (20.0, 30.0)):
        writer = SummaryWriter(str(tmp_path))
        first_step = 4 - len(values)
        for offset, value in enumerate(values):
            writer.add_scalar("train_loss", value, first_step + offset)
        writer.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    assert read_scalars(tmp_path)["train_loss"] == [(1, 1.0), (2, 20.0), (3, 30.0)]


def test_report_writes_figures_and_index(finished_run: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    code = main(["report", str(finished_run["run"]), "--eval", str(finished_run["eval"]),
                 "--predictions", str(finished_run["predictions"]), "--out", str(out)])
    assert code == 0
    assert f"Report: {out / INDEX_FILE}" in capsys.readouterr().out

    for name in (LEARNING_CURVES_FILE, PATIENT_DICE_FILE, SAMPLES_FILE):
        check_png(out / name)

    page = (out / INDEX_FILE).read_text()
    for name in (LEARNING_CURVES_FILE, PATIENT_DICE_FILE, SAMPLES_FILE):
        assert f'<img src="{name}"' in page
    with (finished_run["eval"] / "patient_metrics.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    for row in rows:
        assert html.escape(row["patient"]) in page
    summary = json.loads((finished_run["eval"] / "summary.json").read_text())
    assert f"{summary['metrics']['dice']['mean']:.3f}" in page
    assert "nan" not in page.lower()


def test_report_defaults_to_run_folder(finished_run: dict[str, Path], tmp_path: Path) -> None:
    run_copy = tmp_path / "run"
    run_copy.mkdir()
    (run_copy / "tensorboard").symlink_to(finished_run["run"] / "tensorboard")
    assert main(["report", str(run_copy)]) == 0

    written = sorted(path.name for path in (run_copy / "report").iterdir())
    assert written == [INDEX_FILE, LEARNING_CURVES_FILE]
    check_png(run_copy / "report" / LEARNING_CURVES_FILE)
    assert "Per-patient metrics" not in (run_copy / "report" / INDEX_FILE).read_text()


def test_report_rejects_folder_without_logs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "empty_run"
    run_dir.mkdir()
    assert main(["report", str(run_dir)]) == 2
    assert "No TensorBoard logs" in capsys.readouterr().err
    assert not (run_dir / "report").exists()


def test_report_points_demo_folder_to_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    demo = tmp_path / "demo_run"
    (demo / "run" / "tensorboard").mkdir(parents=True)
    assert main(["report", str(demo)]) == 2
    message = capsys.readouterr().err
    assert f"python -m pipeline report {demo / 'run'} --eval {demo / 'evaluation'}" in message


@pytest.mark.parametrize("option", ["--eval", "--predictions"])
def test_report_rejects_wrong_folders(finished_run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
                                      option: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(finished_run["run"]), option, str(empty), "--out", str(tmp_path / "report")]) == 2
    assert "not found" in capsys.readouterr().err


def test_report_rejects_missing_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "Run folder not found" in capsys.readouterr().err
