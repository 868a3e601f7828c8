"""Measure inference time per patient on the CPU for the PyTorch, TorchScript and ONNX Runtime networks.

Each patient's slices are loaded and normalised once with the preprocessing of
``configs/inference.json``. Then each backend segments the whole volume slice by
slice through the config's ``SliceInferer`` (batches of ``sw_batch_size`` slices),
so the three backends see exactly the batches that the inference workflow feeds to
the network. Each patient is timed ``--repeats`` times per backend after one
warm-up volume; the median counts. File writing is not timed.

The weights are ``models/model.pt`` of the bundle. While that file does not exist,
a randomly initialised network of the same shape is timed instead, which takes the
same time because the operations do not depend on the weights.

The results replace the section "## Inference time per patient" of
``docs/benchmarks.md`` and leave its other sections as they are.

Usage::

    python docs/benchmarks/inference_time.py --data /path/to/kaggle_3m
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import monai
import numpy as np
import onnxruntime
import torch
from monai.bundle import ConfigParser

from pipeline import export
from pipeline.bundle_support import inference_files
from pipeline.io_utils import atomic_write_text

REPO = Path(__file__).resolve().parents[2]

BUNDLE = REPO / "bundles" / "lgg_mri_segmentation"
RESULTS = REPO / "docs" / "benchmarks.md"
SECTION = "## Inference time per patient"
BACKENDS = ("PyTorch", "TorchScript", "ONNX Runtime")


def read_machine() -> dict[str, Any]:
    """Return the CPU model, core count, memory, load average, whether the load exceeds the cores, and the date."""
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")]
        cpu = models[0] if models else cpu
    memory = "unknown"
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        total_kib = next(int(line.split()[1]) for line in meminfo.read_text().splitlines()
                         if line.startswith("MemTotal"))
        memory = f"{total_kib / 1024 ** 2:.1f} GiB"
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return {
        "cpu": cpu,
        "cores": str(len(os.sched_getaffinity(0))),
        "busy": os.getloadavg()[0] > len(os.sched_getaffinity(0)),
        "memory": memory,
        "load": load,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def prepare_checkpoint(folder: Path) -> tuple[Path, bool]:
    """Return the shipped checkpoint, or a randomly initialised one saved in ``folder``, and whether it is shipped."""
    shipped = BUNDLE / "models" / "model.pt"
    if shipped.is_file():
        return shipped, True
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    torch.manual_seed(0)
    path = folder / "random_model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path, False


def build_backends(checkpoint: Path, folder: Path) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Return one callable per backend that maps a batch of slices to logits."""
    network = export.build_network(BUNDLE, checkpoint)
    scripted_path = export.export_torchscript(BUNDLE, checkpoint, folder / "model.ts")
    onnx_path = export.export_onnx(BUNDLE, checkpoint, folder / "model.onnx")
    scripted = torch.jit.load(str(scripted_path)).eval()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def run_onnx(batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().cpu().numpy().astype(np.float32, copy=False)
        return torch.from_numpy(session.run(None, {export.INPUT_NAME: array})[0])

    return {"PyTorch": network, "TorchScript": scripted, "ONNX Runtime": run_onnx}


def time_patients(data: str, backends: dict, repeats: int, limit: int | None) -> tuple[dict, dict]:
    """Time preprocessing and each backend on every patient, and return the seconds per patient and the run's counts."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": data})
    preprocessing = parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer")
    entries = inference_files(data)[:limit]

    seconds: dict[str, list[float]] = {name: [] for name in ("preprocessing", *BACKENDS)}
    slices = []
    max_difference = 0.0
    with torch.inference_mode():
        warm_up = preprocessing(dict(entries[0]))["image"].unsqueeze(0)
        for backend in backends.values():
            inferer(warm_up, backend)

        for entry in entries:
            start = time.perf_counter()
            image = preprocessing(dict(entry))["image"].unsqueeze(0)
            seconds["preprocessing"].append(time.perf_counter() - start)
            slices.append(int(image.shape[-1]))

            reference = None
            for name, backend in backends.items():
                runs = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    logits = inferer(image, backend)
                    runs.append(time.perf_counter() - start)
                seconds[name].append(statistics.median(runs))
                logits = torch.as_tensor(logits)
                if reference is None:
                    reference = logits
                else:
                    max_difference = max(max_difference, float((logits - reference).abs().max()))

    facts = {"patients": len(entries), "slices": sum(slices), "max_difference": max_difference}
    return seconds, facts


def format_section(seconds: dict, facts: dict, machine: dict, shipped: bool, command: str, repeats: int,
                   sw_batch_size: int) -> str:
    weights = (
        "the bundle's `models/model.pt`" if shipped else
        "a randomly initialised network of the same shape, because `models/model.pt` did not exist yet "
        "(the time does not depend on the weights)"
    )
    runs = "one run per patient" if repeats == 1 else f"each the median of {repeats} runs"
    lines = [
        SECTION,
        "",
        f"Command: `{command}`, where KAGGLE_3M is the kaggle_3m folder.",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory']} RAM. "
        f"Load average at the start: {machine['load']} (1, 5 and 15 minutes). Date: {machine['date']}. "
        f"Software: torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"onnxruntime {onnxruntime.__version__}, MONAI {monai.__version__}.",
        "",
        f"Data: {facts['patients']} patients, {facts['slices']} slices of 256x256. Weights: {weights}.",
        "",
        "Each patient's volume goes through `SliceInferer` of `configs/inference.json` in batches of "
        f"{sw_batch_size} slices. Figures are seconds per patient, {runs}, after one warm-up volume. "
        "Loading and normalising the TIFF slices is the same for every backend and is listed apart. "
        "Writing the masks is not timed.",
        "",
    ]
    if machine["busy"]:
        lines += [
            "The load average was above the number of cores, so other processes competed for the CPU. "
            "The times are inflated and vary from patient to patient. Compare the backends with each "
            "other rather than with another machine.",
            "",
        ]
    lines += [
        "| step | mean | median | min | max | ms per slice |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("preprocessing", *BACKENDS):
        values = seconds[name]
        per_slice = 1000 * sum(values) / facts["slices"]
        lines.append(
            f"| {name} | {statistics.mean(values):.2f} | {statistics.median(values):.2f} | "
            f"{min(values):.2f} | {max(values):.2f} | {per_slice:.1f} |"
        )
    lines += [
        "",
        f"Largest absolute difference between TorchScript or ONNX Runtime logits and PyTorch logits: "
        f"{facts['max_difference']:.1e}.",
        "",
    ]
    return "\n".join(lines)


def replace_section(path: Path, section: str) -> None:
    """Replace the section that starts with ``SECTION`` in ``path`` up to the next ``## `` heading, or append it."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    lines = text.splitlines()
    if SECTION in lines:
        start = lines.index(SECTION)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        kept_before, kept_after = lines[:start], lines[end:]
    else:
        kept_before, kept_after = lines, []
    before = "\n".join(kept_before).rstrip("\n")
    after = "\n".join(kept_after)
    content = before + "\n\n" + section.rstrip("\n") + "\n" + ("\n" + after + "\n" if after else "")
    atomic_write_text(path, content)


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--data", required=True, help="kaggle_3m folder of the patients to time")
    arguments.add_argument("--repeats", type=int, default=3, help="timed runs per patient and backend (default: 3)")
    arguments.add_argument("--patients", type=int, default=None, help="time only the first N patients")
    arguments.add_argument("--no-write", action="store_true", help="print the section instead of updating docs/benchmarks.md")
    options = arguments.parse_args()

    machine = read_machine()
    command = "python docs/benchmarks/inference_time.py --data KAGGLE_3M"
    if options.repeats != 3:
        command += f" --repeats {options.repeats}"
    if options.patients is not None:
        command += f" --patients {options.patients}"

    with tempfile.TemporaryDirectory() as folder:
        checkpoint, shipped = prepare_checkpoint(Path(folder))
        backends = build_backends(checkpoint, Path(folder))
        seconds, facts = time_patients(options.data, backends, options.repeats, options.patients)

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    section = format_section(seconds, facts, machine, shipped, command, options.repeats, parser["sw_batch_size"])
    if options.no_write:
        print(section)
    else:
        replace_section(RESULTS, section)
        print(f"Updated {RESULTS}")


if __name__ == "__main__":
    main()
