"""Functions that the bundle configs call: paths, device, run-folder checks, resume, run records.

The configs stay the one definition of each workflow; these helpers only hold
steps that JSON expressions cannot express readably.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, PersistentDataset

from pipeline.io_utils import atomic_write_text
from transforms.errors import DatasetError

__all__ = [
    "bundle_root",
    "evaluation_files",
    "inference_files",
    "load_checkpoint",
    "cached_dataset",
    "check_parameters",
    "check_run_folder",
    "latest_checkpoint",
    "record_run",
    "resume_handlers",
    "select_device",
]

logger = logging.getLogger(__name__)

BUNDLE_NAME = "lgg_mri_segmentation"
_CHECKPOINT_PATTERN = re.compile(r"checkpoint_epoch=(\d+)\.pt$")
_RECORDED_PACKAGES = ("monai", "torch", "pytorch-ignite", "numpy", "tifffile", "nibabel", "itk", "tensorboard")


def bundle_root() -> str:
    """Return the bundle folder: the parent of the ``--config_file`` folder on the command line, else the repository's.

    ``python -m monai.bundle run --config_file X/configs/train.json`` gives ``X``.
    Pass ``--bundle_root`` to override it.
    """
    argv = sys.argv
    for index, argument in enumerate(argv):
        value = None
        if argument == "--config_file" and index + 1 < len(argv):
            value = argv[index + 1]
        elif argument.startswith("--config_file="):
            value = argument.split("=", 1)[1]
        if value:
            first = value.strip("[]'\" ").split(",")[0].strip("'\" ")
            return str(Path(first).resolve().parent.parent)
    return str(Path(__file__).resolve().parent.parent / "bundles" / BUNDLE_NAME)


def select_device(name: str = "auto") -> torch.device:
    """Return the torch device for ``name``: ``auto`` picks CUDA when available, else the CPU.

    Raises:
        DatasetError: CUDA is requested but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DatasetError(f"device {name!r} requested, but CUDA is not available. Use device 'cpu' or 'auto'.")
    return device


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """Return the ``checkpoint_epoch=N.pt`` file with the highest N in a folder, or None."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT_PATTERN.search(p.name))]
    return max(found)[1] if found else None


def check_run_folder(output_dir: str | os.PathLike, checkpoint_dir: str | os.PathLike, resume: bool) -> bool:
    """Check the output folder before training; return True when the run resumes.

    Raises:
        DatasetError: the folder contains another run's checkpoints and ``resume`` is False.
    """
    latest = latest_checkpoint(checkpoint_dir)
    if latest is not None and not resume:
        raise DatasetError(
            f"Output folder {output_dir} already contains a training run ({latest.name}). "
            "Resume it with '--resume true' (bundle) or '--resume' (CLI), or choose another output folder."
        )
    if resume and latest is None:
        logger.warning("Nothing to resume in %s: no checkpoint found, so training starts from epoch 1.", checkpoint_dir)
        return False
    if resume:
        logger.info("Resuming from %s", latest)
    return resume


def resume_handlers(resume: bool, checkpoint_dir: str | os.PathLike, load_dict: dict[str, Any]) -> list[Any]:
    """Return the ``CheckpointLoader`` that restores a run from its latest checkpoint, or an empty list.

    ``load_dict`` names what to restore: network, optimizer, scheduler, trainer
    state and best metric. Checkpoints load with ``weights_only=True``.
    """
    from monai.handlers import CheckpointLoader

    latest = latest_checkpoint(checkpoint_dir)
    if not resume or latest is None:
        return []
    return [CheckpointLoader(load_path=str(latest), load_dict=load_dict, map_location="cpu")]


def cached_dataset(
    data: list[dict[str, Any]],
    transform: Any,
    cache: str = "memory",
    cache_dir: str | os.PathLike = "",
    num_workers: int = 0,
) -> Any:
    """Build the dataset that caches the deterministic part of ``transform``.

    Args:
        cache: ``"memory"`` for ``CacheDataset`` or ``"disk"`` for ``PersistentDataset`` in ``cache_dir``.

    Raises:
        DatasetError: an unknown cache kind, or ``"disk"`` without a cache folder.
    """
    if cache == "memory":
        return CacheDataset(data=data, transform=transform, cache_rate=1.0, num_workers=num_workers or None, progress=True)
    if cache == "disk":
        if not cache_dir:
            raise DatasetError("cache 'disk' needs cache_dir, the folder for PersistentDataset files.")
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return PersistentDataset(data=data, transform=transform, cache_dir=cache_dir)
    raise DatasetError(f"Unknown cache {cache!r}; use 'memory' (CacheDataset) or 'disk' (PersistentDataset).")


# Parameter name -> (accepted types, check, description of valid values).
_PARAMETER_RULES: dict[str, tuple[tuple[type, ...], Any, str]] = {
    "epochs": ((int,), lambda v: v >= 1, "a whole number of 1 or more"),
    "val_interval": ((int,), lambda v: v >= 1, "a whole number of 1 or more"),
    "fold": ((int,), lambda v: v >= 0, "a whole number of 0 or more"),
    "num_folds": ((int,), lambda v: v >= 2, "a whole number of 2 or more"),
    "seed": ((int,), lambda v: True, "a whole number"),
    "learning_rate": ((int, float), lambda v: v > 0, "a number above 0"),
    "weight_decay": ((int, float), lambda v: v >= 0, "a number of 0 or more"),
    "batch_patients": ((int,), lambda v: v >= 1, "a whole number of 1 or more"),
    "samples_per_patient": ((int,), lambda v: v >= 1, "a whole number of 1 or more"),
    "tumour_ratio": ((int, float), lambda v: v >= 0, "a number of 0 or more (tumour to background slice ratio)"),
    "context_radius": ((int,), lambda v: v >= 0, "a whole number of 0 or more"),
    "spatial_dims": ((int,), lambda v: v in (2, 3), "2 or 3"),
    "early_stop_patience": ((int,), lambda v: v >= 0, "a whole number of 0 (off) or more"),
    "cache": ((str,), lambda v: v in ("memory", "disk"), "'memory' or 'disk'"),
}


def check_parameters(parameters: dict[str, Any]) -> None:
    """Check the training parameters of a bundle config before anything runs.

    Raises:
        DatasetError: a parameter has the wrong type or an invalid value; the
            message names it and the values it accepts.
    """
    for name, value in parameters.items():
        if name not in _PARAMETER_RULES:
            continue
        types, check, valid = _PARAMETER_RULES[name]
        if isinstance(value, bool) or not isinstance(value, types) or not check(value):
            raise DatasetError(f"Invalid value {value!r} for {name}: expected {valid}. Fix the override --{name}.")
    _check_patch_size(parameters)


def _check_patch_size(parameters: dict[str, Any]) -> None:
    """Check that patch and window sizes are divisible by the network's total downsampling."""
    strides = parameters.get("strides")
    if not strides:
        return
    dims = int(parameters.get("spatial_dims", 2))
    factors = [1] * 3
    for stride in strides:
        values = list(stride) if isinstance(stride, (list, tuple)) else [stride] * dims
        for axis, value in enumerate(values):
            factors[axis] *= int(value)
    for name in ("patch_size", "roi_size"):
        size = parameters.get(name)
        if not size:
            continue
        for axis, (length, factor) in enumerate(zip(size[:dims], factors)):
            if length != -1 and length % factor != 0:
                raise DatasetError(
                    f"Invalid {name} {list(size)}: axis {axis} has {length} voxels, which the network's strides "
                    f"{list(strides)} do not divide (it needs a multiple of {factor}). Fix the override --{name}."
                )


def _package_versions() -> dict[str, str]:
    versions = {}
    for name in _RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def record_run(output_dir: str | os.PathLike, parameters: dict[str, Any], train_files: list, val_files: list) -> Path:
    """Write the run's parameters, package versions and patient split to ``output_dir``.

    Writes ``run_info.json`` (parameters, versions, Python, platform, device) and
    ``datalist.json`` (every patient of this run with its fold, in the layout of
    :func:`pipeline.datalist.build_datalist`).
    """
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    info = {
        "parameters": parameters,
        "packages": _package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cuda_available": torch.cuda.is_available(),
        "command": sys.argv,
    }
    atomic_write_text(folder / "run_info.json", json.dumps(info, indent=2, default=str) + "\n")
    # The same layout as 'python -m pipeline split', so '--datalist RUN/datalist.json --fold K' evaluates
    # exactly this run's validation patients.
    entries = sorted((dict(entry) for entry in [*train_files, *val_files]), key=lambda e: e.get("patient", e["image"]))
    split = {
        "description": "The patients of this training run; the validation set is the entries of fold 'fold'.",
        "num_folds": parameters.get("num_folds"),
        "fold": parameters.get("fold"),
        "training": entries,
    }
    atomic_write_text(folder / "datalist.json", json.dumps(split, indent=2, default=str) + "\n")
    logger.info("Training %d patients, validating %d; run record in %s", len(train_files), len(val_files), folder)
    return folder


def evaluation_files(dataset_dir: str | os.PathLike, datalist_file: str | os.PathLike | None = None,
                     fold: int = 0) -> list[dict[str, Any]]:
    """Return the patients to evaluate: a datalist's validation fold, or every patient in the dataset.

    Raises:
        DatasetError: the dataset or datalist is invalid.
    """
    from pipeline.datalist import fold_files
    from pipeline.discovery import discover_patients

    if datalist_file:
        return fold_files(dataset_dir, datalist_file, fold, "validation")
    if not dataset_dir:
        raise DatasetError("dataset_dir is not set. Give --dataset_dir, the kaggle_3m folder.")
    patients = discover_patients(dataset_dir, require_masks=True)
    return [{"patient": p.patient, "image": list(p.images), "label": list(p.masks)} for p in patients]


def inference_files(dataset_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Return one entry per patient found under ``dataset_dir``; masks are not needed.

    Raises:
        DatasetError: the path does not exist or contains no patients.
    """
    from pipeline.discovery import discover_patients

    if not dataset_dir:
        raise DatasetError("dataset_dir is not set. Give --dataset_dir, a folder of patient folders or one patient.")
    patients = discover_patients(dataset_dir, require_masks=False)
    return [{"patient": p.patient, "image": list(p.images)} for p in patients]


def load_checkpoint(network: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load network weights from a checkpoint with ``weights_only=True``.

    Accepts a plain ``state_dict`` or a training checkpoint with a ``model`` entry.

    Raises:
        DatasetError: the file is missing, unreadable, or made for another network shape.
    """
    file = Path(path)
    if not file.is_file():
        raise DatasetError(
            f"Checkpoint not found: {file}. Train a model first, or set ckpt_path (CLI: --checkpoint) to a model.pt file."
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise DatasetError(f"Cannot load checkpoint {file} ({type(error).__name__}: {error}).") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    target = network.module if hasattr(network, "module") else network
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1].strip()
        raise DatasetError(
            f"Checkpoint {file} does not fit the configured network ({first_line}). Use the config the "
            "checkpoint was trained with (for example the same --mode, context_radius and channels)."
        ) from None
    logger.info("Loaded weights from %s", file)
    return network
