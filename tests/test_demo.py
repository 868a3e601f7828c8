"""Tests for the ``demo`` command: a short whole workflow on synthetic data, and its output-folder rules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.image import imread

from pipeline.cli import main
from pipeline.demo import DEMO_FOLDERS, MARKER_FILE, prepare_folder
from pipeline.report import FIGURE_SIZES


def test_demo_runs_whole_workflow(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    # Small images and 2 epochs keep this run short. The command's defaults train longer.
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "demo", "--out", str(out), "--epochs", "2", "--size", "64"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    lines = result.stdout.splitlines()
    assert f"Report: {out / 'report' / 'index.html'}" in lines
    assert f"TensorBoard: tensorboard --logdir {out / 'run' / 'tensorboard'}" in lines
    assert any(line.startswith(f"Model: {out / 'run' / 'checkpoints' / 'model.pt'}") for line in lines)

    assert (out / "run" / "checkpoints" / "model.pt").is_file()
    assert list((out / "run" / "tensorboard").glob("events.out.tfevents.*"))
    test_patients = sorted(p.name for p in (out / "data" / "test" / "kaggle_3m").iterdir() if p.is_dir())
    train_patients = sorted(p.name for p in (out / "data" / "train" / "kaggle_3m").iterdir() if p.is_dir())
    assert len(test_patients) == 4
    assert len(train_patients) == 8

    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    assert summary["n_patients"] == len(test_patients)
    predicted = (out / "predictions" / "predictions.csv").read_text().splitlines()[1:]
    assert sorted(line.split(",")[0] for line in predicted) == test_patients

    for name, (width, height) in FIGURE_SIZES.items():
        assert imread(out / "report" / name).shape[:2] == (height, width), name
    assert json.loads((out / "demo.json").read_text())["epochs"] == 2


def test_demo_rejects_used_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    assert main(["demo", "--out", str(foreign)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (foreign / "thesis.tex").read_text() == "keep me"

    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "demo.json").write_text("{}")
    assert main(["demo", "--out", str(earlier)]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(("option", "value"), [("--epochs", "0"), ("--size", "50")])
def test_demo_rejects_bad_settings(tmp_path: Path, capsys: pytest.CaptureFixture, option: str, value: str) -> None:
    assert main(["demo", "--out", str(tmp_path / "demo"), option, value]) == 2
    assert option in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_overwrite_deletes_only_demo_folders(tmp_path: Path) -> None:
    earlier = tmp_path / "earlier"
    for name in DEMO_FOLDERS:
        (earlier / name).mkdir(parents=True)
        (earlier / name / "file.txt").write_text("from the earlier demo")
    (earlier / MARKER_FILE).write_text("{}")
    (earlier / "notes.txt").write_text("keep me")

    prepare_folder(earlier, overwrite=True)
    assert sorted(path.name for path in earlier.iterdir()) == ["notes.txt"]
