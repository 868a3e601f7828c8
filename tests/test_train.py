"""Training through the bundle config: monai.bundle runner and CLI, 2D, 2.5D and 3D, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from monai.networks.nets import UNet
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "bundles" / "lgg_mri_segmentation"
TRAIN_CONFIG = BUNDLE / "configs" / "train.json"

# Overrides that make a training run take seconds on 64x64 synthetic slices.
SMALL_2D = ["--set", "patch_size=[64,64,1]", "--set", "roi_size=[64,64]", "--set", "num_workers=0"]
SMALL_3D = ["--set", "patch_size=[32,32,8]", "--set", "roi_size=[32,32,8]", "--set", "num_workers=0"]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True, text=True, cwd=cwd, timeout=timeout,
    )


def read_scalars(log_dir: Path) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    for event_file in sorted(log_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(event_file), size_guidance={"scalars": 0, "images": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            values.setdefault(tag, []).extend(e.value for e in accumulator.Scalars(tag))
    return values


def read_image_tags(log_dir: Path) -> set[str]:
    tags: set[str] = set()
    for event_file in log_dir.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(event_file), size_guidance={"images": 0})
        accumulator.Reload()
        tags.update(accumulator.Tags()["images"])
    return tags


def load_network(run_dir: Path, spatial_dims: int = 2, in_channels: int = 3) -> UNet:
    """Build the run's UNet from its recorded parameters and load its best checkpoint."""
    config = json.loads(TRAIN_CONFIG.read_text())["network_def"]
    strides = json.loads((run_dir / "run_info.json").read_text())["parameters"]["strides"]
    path = run_dir / "checkpoints" / "model.pt"
    network = UNet(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=2,
        channels=config["channels"], strides=strides,
        num_res_units=config["num_res_units"], norm=config["norm"],
    )
    state = torch.load(path, map_location="cpu", weights_only=True)
    network.load_state_dict(state)
    return network


def test_bundle_runner_trains_and_logs(small_synthetic_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(TRAIN_CONFIG),
        "--dataset_dir", str(small_synthetic_data),
        "--output_dir", str(out),
        "--epochs", "4", "--val_interval", "2", "--learning_rate", "0.005",
        "--patch_size", "[64,64,1]", "--roi_size", "[64,64]", "--num_workers", "0",
    ]
    # An unrelated working folder: every path must derive from bundle_root, dataset_dir and output_dir.
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    scalars = read_scalars(out / "tensorboard")
    assert {"train_loss", "learning_rate", "val_mean_dice", "val_mean_iou"} <= scalars.keys()
    losses = scalars["train_loss"]
    assert len(losses) == 4 * 2  # 4 epochs of 4 training patients in batches of 2
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2
    assert len(scalars["val_mean_dice"]) == 2
    assert all(0.0 <= v <= 1.0 for v in scalars["val_mean_dice"])
    assert scalars["learning_rate"][0] == pytest.approx(0.005)
    assert scalars["learning_rate"][-1] < scalars["learning_rate"][0]
    assert "validation/flair_truth_prediction" in read_image_tags(out / "tensorboard")

    best = out / "checkpoints" / "model.pt"
    latest = out / "checkpoints" / "checkpoint_epoch=4.pt"
    assert best.is_file()
    assert latest.is_file()
    load_network(out)
    state = torch.load(latest, map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 4 * state["trainer"]["epoch_length"]
    assert {"model", "optimizer", "lr_scheduler", "best_metric"} <= state.keys()
    assert state["best_metric"]["best_metric"] == pytest.approx(max(scalars["val_mean_dice"]), abs=1e-6)

    info = json.loads((out / "run_info.json").read_text())
    assert info["parameters"]["epochs"] == 4
    assert info["packages"]["monai"]
    split = json.loads((out / "datalist.json").read_text())
    patients = [e["patient"] for e in split["training"]]
    assert len(set(patients)) == 5
    assert split["fold"] == 0
    assert len([e for e in split["training"] if e["fold"] == 0]) == 1  # 5 patients in 5 folds


@pytest.mark.parametrize(
    ("mode", "extra", "in_channels", "spatial_dims"),
    [("2d", SMALL_2D, 3, 2), ("2.5d", SMALL_2D, 9, 2), ("3d", SMALL_3D, 3, 3)],
)
def test_cli_trains_each_mode(
    small_synthetic_data: Path, tmp_path: Path, mode: str, extra: list[str], in_channels: int, spatial_dims: int
) -> None:
    out = tmp_path / mode
    result = run_cli("train", "--data", str(small_synthetic_data), "--out", str(out), "--epochs", "1",
                     "--mode", mode, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "config.json").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["spatial_dims"] == spatial_dims
    network = load_network(out, spatial_dims, in_channels)
    shape = (1, in_channels, 32, 32) if spatial_dims == 2 else (1, in_channels, 32, 32, 16)
    with torch.no_grad():
        assert network.eval()(torch.zeros(shape)).shape[1] == 2


def test_killed_run_resumes_at_next_epoch(small_synthetic_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [sys.executable, "-m", "pipeline", "train", "--data", str(small_synthetic_data), "--out", str(out),
            "--epochs", "6", "--set", "val_interval=1", "--set", "samples_per_patient=16", *SMALL_2D]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = out / "checkpoints" / "checkpoint_epoch=2.pt"
    deadline = time.monotonic() + 240
    while not second.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert second.exists(), "training did not reach epoch 2"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    latest = max(int(p.stem.split("=")[1]) for p in (out / "checkpoints").glob("checkpoint_epoch=*.pt"))
    assert latest < 6
    before = torch.load(out / "checkpoints" / f"checkpoint_epoch={latest}.pt", weights_only=True)

    rejected = run_cli("train", "--data", str(small_synthetic_data), "--out", str(out), "--epochs", "6", *SMALL_2D)
    assert rejected.returncode == 2
    assert "--resume" in rejected.stderr

    resumed = run_cli("train", "--data", str(small_synthetic_data), "--out", str(out), "--epochs", "6",
                      "--resume", "--set", "val_interval=1", "--set", "samples_per_patient=16", *SMALL_2D)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    epochs_run = [line for line in resumed.stderr.splitlines() if "Epoch[" in line and "Complete" in line]
    assert epochs_run and f"Epoch[{latest + 1}]" in epochs_run[0]
    final = torch.load(out / "checkpoints" / "checkpoint_epoch=6.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 6 * final["trainer"]["epoch_length"]
    assert final["best_metric"]["best_metric"] >= before["best_metric"]["best_metric"]
    assert final["lr_scheduler"]["last_epoch"] == 6
    remaining = sorted(p.name for p in (out / "checkpoints").glob("checkpoint_epoch=*.pt"))
    assert remaining == ["checkpoint_epoch=5.pt", "checkpoint_epoch=6.pt"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "learnin_rate=0.1"], "Unknown config key 'learnin_rate'"),
        (["--set", "epochs=two"], "Invalid value 'two' for epochs"),
        (["--set", "learning_rate=-1"], "Invalid value -1 for learning_rate"),
        (["--fold", "7"], "Fold 7 is out of range"),
    ],
)
def test_cli_rejects_bad_options(small_synthetic_data: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    result = run_cli("train", "--data", str(small_synthetic_data), "--out", str(tmp_path / "run"), *extra, *SMALL_2D)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_cli_rejects_bad_datalists(small_synthetic_data: Path, tmp_path: Path) -> None:
    entries = json.loads(run_cli("split", "--data", str(small_synthetic_data), "--folds", "2",
                                 "--out", str(tmp_path / "ok.json")).stdout and (tmp_path / "ok.json").read_text())
    unknown = json.loads(json.dumps(entries))
    unknown["training"][0]["image"] = unknown["training"][0]["label"] = "TCGA_XX_0000_20000101"
    unknown["training"][0]["patient"] = "TCGA_XX_0000_20000101"
    twice = json.loads(json.dumps(entries))
    twice["training"].append(dict(twice["training"][0], fold=1 - twice["training"][0]["fold"]))
    cases = {
        "unknown.json": (unknown, "TCGA_XX_0000_20000101"),
        "twice.json": (twice, "appears twice"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(json.dumps(content))
        result = run_cli("train", "--data", str(small_synthetic_data), "--out", str(tmp_path / name.split(".")[0]),
                         "--datalist", str(tmp_path / name), *SMALL_2D)
        assert result.returncode == 2, result.stderr[-2000:]
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def test_cli_rejects_missing_dataset(tmp_path: Path) -> None:
    result = run_cli("train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "Dataset folder not found" in result.stderr


def test_early_stopping_ends_run(small_synthetic_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # A learning rate this small leaves the validation Dice unchanged, so patience 2 stops after 3 validations.
    result = run_cli("train", "--data", str(small_synthetic_data), "--out", str(out), "--epochs", "10",
                     "--set", "val_interval=1", "--set", "learning_rate=1e-12", "--set", "early_stop_patience=2",
                     "--set", "tumour_ratio=0", *SMALL_2D)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Early stopping" in result.stderr
    checkpoints = sorted(int(p.stem.split("=")[1]) for p in (out / "checkpoints").glob("checkpoint_epoch=*.pt"))
    assert checkpoints[-1] == 3


def test_disk_cache_writes_persistent_files(small_synthetic_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_cli("train", "--data", str(small_synthetic_data), "--out", str(out), "--epochs", "1",
                     "--set", "cache=disk", *SMALL_2D)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((out / "cache").glob("*.pt"))) == 5  # one cached item per patient, training and validation


def test_split_rejects_folder_as_output(small_synthetic_data: Path, tmp_path: Path) -> None:
    result = run_cli("split", "--data", str(small_synthetic_data), "--out", f"{tmp_path}/")
    assert result.returncode == 2
    assert "is a folder" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_split_folds_cover_each_patient_once(small_synthetic_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "datalist.json"
    result = run_cli("split", "--data", str(small_synthetic_data), "--folds", "2", "--seed", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    entries = json.loads(out.read_text())["training"]
    assert sorted(e["patient"] for e in entries) == sorted(p.name for p in small_synthetic_data.iterdir() if p.is_dir())
    sizes = sorted(sum(1 for e in entries if e["fold"] == fold) for fold in (0, 1))
    assert sizes == [2, 3]
