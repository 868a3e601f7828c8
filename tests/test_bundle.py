"""The MONAI bundle as a model-zoo user runs it: metadata, network shape, every workflow, export, bad input.

One tiny network is trained through ``configs/train.json`` on 64x64 synthetic data
and shared by the tests of this module. Workflows run through
``python -m monai.bundle`` and ``torchrun`` in subprocesses, from a working folder
outside the repository.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import onnxruntime
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser, verify_metadata
from monai.data import load_net_with_metadata

from pipeline import export
from transforms.errors import DatasetError

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "bundles" / "lgg_mri_segmentation"
CONFIGS = BUNDLE / "configs"
METADATA = CONFIGS / "metadata.json"
SCHEMA = CONFIGS / "metadata_schema.json"
SHIPPED_MODEL = BUNDLE / "models" / "model.pt"

# Overrides that make the training and evaluation workflows take seconds on 64x64 slices.
SMALL = ["--patch_size", "[64,64,1]", "--roi_size", "[64,64]", "--num_workers", "0"]

# Largest absolute difference accepted between exported and PyTorch logits on the same input.
EXPORT_TOLERANCE = 1e-4

# Keys of metadata.json: the mandatory ones of the MONAI Bundle Specification and the
# descriptive ones that model-zoo bundles fill.
REQUIRED_METADATA_KEYS = {
    "schema", "version", "changelog", "monai_version", "pytorch_version", "numpy_version",
    "required_packages_version", "task", "description", "authors", "copyright",
    "data_source", "data_type", "image_classes", "label_classes", "pred_classes",
    "eval_metrics", "intended_use", "references", "network_data_format",
}
TENSOR_KEYS = {
    "type", "format", "modality", "num_channels", "spatial_shape", "dtype",
    "value_range", "is_patch_data", "channel_def",
}


def config_list(*names: str) -> str:
    """Return the ``--config_file`` value that merges bundle configs in order."""
    return "[" + ",".join(f"'{CONFIGS / name}'" for name in names) + "]"


def run_bundle(command: str, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", command, *args],
        capture_output=True, text=True, cwd=cwd, timeout=timeout,
    )


def free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def slice_count(patient_folder: Path) -> int:
    return sum(1 for path in patient_folder.glob("*.tif") if not path.name.endswith("_mask.tif"))


@pytest.fixture(scope="module")
def tiny_model(small_synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The best checkpoint of a 1-epoch training run through ``configs/train.json``."""
    work = tmp_path_factory.mktemp("tiny_model")
    result = run_bundle(
        "run", "--config_file", str(CONFIGS / "train.json"),
        "--dataset_dir", str(small_synthetic_data), "--output_dir", str(work / "run"),
        "--epochs", "1", "--val_interval", "1", *SMALL,
        cwd=work,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = work / "run" / "checkpoints" / "model.pt"
    assert checkpoint.is_file()
    return checkpoint


@pytest.fixture()
def shipped_model() -> Path:
    if not SHIPPED_MODEL.is_file():
        pytest.skip(f"{SHIPPED_MODEL.relative_to(REPO)} is not in the repository yet; train a model and copy it there")
    return SHIPPED_MODEL


def test_metadata_has_required_keys() -> None:
    metadata = json.loads(METADATA.read_text())
    assert REQUIRED_METADATA_KEYS <= metadata.keys()
    assert "mean_dice" in metadata["eval_metrics"]
    image = metadata["network_data_format"]["inputs"]["image"]
    pred = metadata["network_data_format"]["outputs"]["pred"]
    assert TENSOR_KEYS - {"modality"} <= pred.keys()
    assert TENSOR_KEYS <= image.keys()
    assert image["channel_def"] == {"0": "pre-contrast", "1": "FLAIR", "2": "post-contrast"}
    assert pred["channel_def"] == {"0": "background", "1": "tumour"}


def test_metadata_matches_inference_config() -> None:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    metadata = json.loads(METADATA.read_text())
    image = metadata["network_data_format"]["inputs"]["image"]
    pred = metadata["network_data_format"]["outputs"]["pred"]
    assert image["num_channels"] == parser.get_parsed_content("in_channels")
    assert pred["num_channels"] == parser["out_channels"]
    assert image["spatial_shape"] == parser["roi_size"]
    assert pred["spatial_shape"] == parser["roi_size"]


def test_verify_metadata_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def block_connection(*args: object, **kwargs: object) -> None:
        raise OSError("network access during an offline test")

    # With the schema file present, verify_metadata must read it instead of downloading the URL in "schema".
    monkeypatch.setattr(socket.socket, "connect", block_connection)
    verify_metadata(meta_file=str(METADATA), filepath=str(SCHEMA))


def test_verify_metadata_cli(tmp_path: Path) -> None:
    result = run_bundle("verify_metadata", "--meta_file", str(METADATA), "--filepath", str(SCHEMA), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "skipped downloading" in output
    assert "metadata is verified with no error" in output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("version"), "'version' is a required property"),
        (lambda m: m["network_data_format"]["inputs"]["image"].update(num_channels="3"), "'3' is not of type 'integer'"),
        (lambda m: m["eval_metrics"].update(mean_dice="high"), "'high' is not of type 'number', 'null'"),
    ],
)
def test_verify_metadata_rejects_invalid(tmp_path: Path, change: Callable[[dict], object], message: str) -> None:
    metadata = json.loads(METADATA.read_text())
    change(metadata)
    invalid = tmp_path / "metadata.json"
    invalid.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=re.escape(message)):
        verify_metadata(meta_file=str(invalid), filepath=str(SCHEMA))


def test_verify_net_in_out(tmp_path: Path) -> None:
    result = run_bundle(
        "verify_net_in_out", "network_def", "--meta_file", str(METADATA),
        "--config_file", str(CONFIGS / "inference.json"), "--device", "cpu",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data shape of network is verified with no error" in result.stdout + result.stderr


def test_train_then_evaluate(tiny_model: Path, small_synthetic_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "evaluation"
    result = run_bundle(
        "run", "--config_file", config_list("train.json", "evaluate.json"),
        "--dataset_dir", str(small_synthetic_data), "--output_dir", str(out),
        "--ckpt_path", str(tiny_model), *SMALL,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    patients = sorted(path.name for path in small_synthetic_data.iterdir() if path.is_dir())
    with open(out / "patient_metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert sorted(row["patient"] for row in rows) == patients
    for row in rows:
        for column in ("dice", "iou", "slice_sensitivity", "slice_specificity"):
            assert 0.0 <= float(row[column]) <= 1.0, (row["patient"], column, row[column])

    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_patients"] == len(patients)
    handlers = json.loads((CONFIGS / "evaluate.json").read_text())["validate#handlers"]
    saver = next(handler for handler in handlers if handler["_target_"] == "MetricsSaver")
    for name in saver["metric_details"]:
        assert (out / f"{name}_raw.csv").is_file(), name


def test_inference_writes_masks(tiny_model: Path, synthetic_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "predictions"
    result = run_bundle(
        "run", "--config_file", str(CONFIGS / "inference.json"),
        "--dataset_dir", str(synthetic_data), "--output_dir", str(out),
        "--ckpt_path", str(tiny_model),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # configs/logging.conf routes the project's loggers to stderr.
    assert f"INFO pipeline.bundle_support: Loaded weights from {tiny_model}" in result.stderr

    folders = sorted(path for path in synthetic_data.iterdir() if path.is_dir())
    assert sorted(path.name for path in out.iterdir()) == [folder.name for folder in folders]
    for folder in folders:
        patient, count = folder.name, slice_count(folder)
        written = out / patient
        expected = {f"{patient}_{n}_mask.tif" for n in range(1, count + 1)}
        assert {path.name for path in written.glob("*.tif")} == expected

        volume = nib.load(written / f"{patient}_mask.nii.gz")
        assert volume.shape == (256, 256, count)
        labels = np.asarray(volume.dataobj)
        assert set(np.unique(labels)) <= {0, 1}

        for n in (1, count // 2, count):
            mask = tifffile.imread(written / f"{patient}_{n}_mask.tif")
            assert mask.dtype == np.uint8
            assert mask.shape == (256, 256)
            assert set(np.unique(mask)) <= {0, 255}
            # Volumes are (x, y, slice): the transposed slice is the TIFF's (row, column) view.
            np.testing.assert_array_equal(mask, labels[..., n - 1].T * 255)


def test_multi_gpu_config_disables_file_handlers() -> None:
    train = json.loads((CONFIGS / "train.json").read_text())
    overlay = json.loads((CONFIGS / "multi_gpu_train.json").read_text())
    rank_zero_only = {
        "StatsHandler", "TensorBoardStatsHandler", "pipeline.handlers.LearningRateLogger",
        "ignite.handlers.ProgressBar", "pipeline.handlers.OverlayImageHandler",
    }
    disabled = [key for key in overlay if key.endswith("#_disabled_")]
    for key in disabled:
        handler = re.fullmatch(r"(train|validate)#handlers#(\d+)#_disabled_", key)
        if handler is None:
            continue
        section, index = handler.group(1), int(handler.group(2))
        assert train[section]["handlers"][index]["_target_"] in rank_zero_only, key
    assert "summary_writer#_disabled_" in disabled
    assert "validate#best_saver#_disabled_" in disabled


def test_multi_gpu_train_two_cpu_processes(small_synthetic_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_local_port()),
        "-m", "monai.bundle", "run",
        "--config_file", config_list("train.json", "multi_gpu_train.json"),
        "--dataset_dir", str(small_synthetic_data), "--output_dir", str(out),
        "--epochs", "3", "--val_interval", "1", "--device_name", "cpu", *SMALL,
    ]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]

    # Rank 0 alone saves, logs statistics and writes TensorBoard events.
    assert result.stdout.count("Epoch[3] Metrics") == 1
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    # Ignite's DiskSaver writes and rotates on rank 0 only, so the two newest checkpoints remain.
    assert sorted(path.name for path in (out / "checkpoints").iterdir()) == [
        "checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt", "model.pt"]
    assert (out / "run_info.json").is_file()

    state = torch.load(out / "checkpoints" / "checkpoint_epoch=3.pt", map_location="cpu", weights_only=True)
    # 4 training patients, 2 per batch, split over 2 processes: one iteration each.
    assert state["trainer"]["epoch_length"] == 1
    assert not any(key.startswith("module.") for key in state["model"])
    network = export.build_network(BUNDLE, out / "checkpoints" / "model.pt")
    with torch.no_grad():
        assert network(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_ckpt_export_cli(tiny_model: Path, tmp_path: Path) -> None:
    output = tmp_path / "model.ts"
    result = run_bundle(
        "ckpt_export", "network_def", "--filepath", str(output), "--ckpt_file", str(tiny_model),
        "--meta_file", str(METADATA), "--config_file", str(CONFIGS / "inference.json"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    network, metadata, extra = load_net_with_metadata(str(output), more_extra_files=("inference.json",))
    assert metadata["version"] == json.loads(METADATA.read_text())["version"]
    assert json.loads(extra["inference.json"])["network_def"]["_target_"] == "UNet"


def check_exports_match(checkpoint: Path, folder: Path) -> None:
    """Export ``checkpoint`` to TorchScript and ONNX and compare their logits with PyTorch's."""
    network = export.build_network(BUNDLE, checkpoint)
    scripted_path = export.export_torchscript(BUNDLE, checkpoint, folder / "model.ts")
    onnx_path = export.export_onnx(BUNDLE, checkpoint, folder / "model.onnx")

    scripted, metadata, extra = load_net_with_metadata(str(scripted_path), more_extra_files=("inference.json",))
    assert metadata["network_data_format"]["inputs"]["image"]["num_channels"] == 3
    assert "network_def" in json.loads(extra["inference.json"])
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [item.name for item in session.get_inputs()] == [export.INPUT_NAME]
    assert [item.name for item in session.get_outputs()] == [export.OUTPUT_NAME]

    # Two batch sizes check that the ONNX batch axis is dynamic.
    generator = torch.Generator().manual_seed(0)
    for batch in (1, 3):
        image = torch.randn(batch, 3, 256, 256, generator=generator)
        with torch.no_grad():
            expected = network(image)
            from_torchscript = scripted(image)
        from_onnx = session.run(None, {export.INPUT_NAME: image.numpy()})[0]
        assert from_torchscript.shape == expected.shape == (batch, 2, 256, 256)
        assert from_onnx.shape == (batch, 2, 256, 256)
        assert (from_torchscript - expected).abs().max().item() <= EXPORT_TOLERANCE
        assert np.abs(from_onnx - expected.numpy()).max() <= EXPORT_TOLERANCE


def test_exports_match_pytorch(tiny_model: Path, tmp_path: Path) -> None:
    check_exports_match(tiny_model, tmp_path)


def test_shipped_model_exports_match(shipped_model: Path, tmp_path: Path) -> None:
    check_exports_match(shipped_model, tmp_path)


def test_export_command(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    export.register(parser.add_subparsers(dest="command"))
    for export_format, name in (("onnx", "model.onnx"), ("torchscript", "model.ts")):
        args = parser.parse_args([
            "export", "--format", export_format, "--bundle", str(BUNDLE),
            "--checkpoint", str(tiny_model), "--out", str(tmp_path / name),
        ])
        assert args.func(args) == 0
        assert (tmp_path / name).stat().st_size > 0
        assert str(tmp_path / name) in capsys.readouterr().out

    missing = parser.parse_args([
        "export", "--format", "onnx", "--bundle", str(BUNDLE),
        "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "missing.onnx"),
    ])
    with pytest.raises(DatasetError, match="Checkpoint not found"):
        missing.func(missing)
    assert not (tmp_path / "missing.onnx").exists()


def other_shape_checkpoint(folder: Path) -> Path:
    """Save the weights of the training config's network for 2.5D input (context_radius 1, 9 channels)."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser["context_radius"] = 1
    network = parser.get_parsed_content("network_def")
    path = folder / "context_radius_1.pt"
    torch.save(network.state_dict(), path)
    return path


@pytest.mark.parametrize(
    "case",
    ["missing checkpoint", "other network shape", "no patients", "output inside input"],
)
def test_inference_rejects_bad_input(case: str, tiny_model: Path, synthetic_data: Path, tmp_path: Path) -> None:
    dataset, output, checkpoint = synthetic_data, tmp_path / "predictions", tiny_model
    if case == "missing checkpoint":
        checkpoint = tmp_path / "missing.pt"
        message = f"Checkpoint not found: {checkpoint}"
    elif case == "other network shape":
        checkpoint = other_shape_checkpoint(tmp_path)
        message = f"Checkpoint {checkpoint} does not fit the configured network"
    elif case == "no patients":
        dataset = tmp_path / "empty"
        dataset.mkdir()
        message = f"No patients found under {dataset}"
    else:
        output = synthetic_data
        message = f"Output folder {output} is inside the input folder {dataset}"

    before = sorted(path.relative_to(synthetic_data) for path in synthetic_data.rglob("*"))
    result = run_bundle(
        "run", "--config_file", str(CONFIGS / "inference.json"),
        "--dataset_dir", str(dataset), "--output_dir", str(output), "--ckpt_path", str(checkpoint),
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert sorted(path.relative_to(synthetic_data) for path in synthetic_data.rglob("*")) == before
