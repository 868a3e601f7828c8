"""Shared pytest fixtures: the real-data path and generated synthetic datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.synth import generate_dataset

REAL_DATA_VARIABLE = "LGG_DATA_DIR"


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real kaggle_3m folder named by LGG_DATA_DIR; tests that use it skip when it is absent."""
    value = os.environ.get(REAL_DATA_VARIABLE, "")
    if not value:
        pytest.skip(f"real LGG data not available: set {REAL_DATA_VARIABLE} to a kaggle_3m folder")
    if not Path(value).is_dir():
        pytest.skip(f"real LGG data not available: {REAL_DATA_VARIABLE}={value} is not a folder")
    return Path(value)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic kaggle_3m folder: 4 patients, 16 to 20 slices of 256x256, seed 0. Read-only for tests."""
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), patients=4, seed=0, slices=(16, 20), size=256)


@pytest.fixture(scope="session")
def small_synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic kaggle_3m folder for training tests: 5 patients, 12 to 16 slices of 64x64."""
    return generate_dataset(tmp_path_factory.mktemp("small_synthetic"), patients=5, seed=1, slices=(12, 16), size=64)


@pytest.fixture(scope="session")
def checkpoint(small_synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The best model of a 2-epoch training run on the small synthetic dataset, shared by the test files."""
    from pipeline.cli import main

    run_dir = tmp_path_factory.mktemp("shared_run") / "run"
    overrides = ["--set", "roi_size=[64,64]", "--set", "patch_size=[64,64,1]", "--set", "num_workers=0",
                 "--set", "val_interval=1"]
    assert main(["train", "--data", str(small_synthetic_data), "--out", str(run_dir), "--epochs", "2", *overrides]) == 0
    return run_dir / "checkpoints" / "model.pt"
