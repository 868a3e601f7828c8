"""Time loading a Kaggle LGG dataset into volumes, against a plain ``tifffile`` loop.

Each variant handles every patient of a ``kaggle_3m`` folder and keeps all arrays in memory:

- ``loader``: ``discover`` and ``LoadPatientSlicesd``, which check every slice and
  return a float32 image volume and a uint8 label volume per patient, channel first.
- ``loader_uint8``: the same with ``dtype=numpy.uint8``, so that its output has the
  size of the floor's output.
- ``floor``: for each patient folder, ``tifffile.imread`` of every image and mask
  in slice order and ``numpy.stack`` into uint8 arrays, without checks or conversion.
- ``floor_serial``: the same with ``tifffile.imread(..., maxworkers=1)``, as
  ``read_tiff`` calls it, so that the ratio to it is the loader's own cost.
- ``float32_memory``: no file reads. It fills float32 arrays of the loader's image
  volume sizes with ones, which measures what writing that much new memory costs.

Each run of a variant is a fresh Python process. Its wall time and CPU time (user
and system, all threads) cover the loading only, not interpreter start-up or
imports. On a machine shared with other jobs, the CPU time varies less than the
wall time. Its peak memory is the process's maximum
resident set size (``ru_maxrss``), and "loading memory" is that peak minus the
resident set size after imports. One unmeasured run of each variant first fills the
page cache, and the measured runs rotate the order of the variants.

Usage::

    python docs/benchmarks/load_volumes.py --data ../shared/data/kaggle_3m --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("loader", "loader_uint8", "floor", "floor_serial", "float32_memory")
_IMAGE_NAME = re.compile(r"^(?P<patient>.+)_(?P<number>\d+)\.tif$")


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_with_loader(data: Path, dtype: object = None) -> tuple[list, int, int]:
    """Load every patient with ``discover`` and ``LoadPatientSlicesd``, and return the volumes and the counts."""
    from pipeline.discovery import discover
    from transforms.io import LoadPatientSlicesd

    loader = LoadPatientSlicesd(dtype=dtype)
    volumes = []
    for patient in discover(data).patients:
        volumes.append(loader({"image": patient, "label": patient}))
    slices = sum(item["image"].shape[-1] for item in volumes)
    return volumes, len(volumes), slices


def load_with_tifffile(data: Path, maxworkers: int | None = None) -> tuple[list, int, int]:
    """Read and stack every slice of every patient folder with tifffile and numpy only."""
    import numpy as np
    import tifffile

    volumes = []
    for folder in sorted(entry.path for entry in os.scandir(data) if entry.is_dir()):
        numbers = sorted(int(match["number"]) for match in map(_IMAGE_NAME.match, os.listdir(folder)) if match)
        name = os.path.basename(folder)
        image_files = [os.path.join(folder, f"{name}_{n}.tif") for n in numbers]
        mask_files = [os.path.join(folder, f"{name}_{n}_mask.tif") for n in numbers]
        images = np.stack([tifffile.imread(path, maxworkers=maxworkers) for path in image_files])
        masks = np.stack([tifffile.imread(path, maxworkers=maxworkers) for path in mask_files])
        volumes.append((images, masks))
    slices = sum(len(images) for images, _ in volumes)
    return volumes, len(volumes), slices


def fill_float32_volumes(data: Path) -> tuple[list, int, int]:
    """Fill float32 arrays of the loader's image volume sizes with ones, without reading the slices."""
    import numpy as np
    import tifffile

    volumes = []
    for folder in sorted(entry.path for entry in os.scandir(data) if entry.is_dir()):
        numbers = sorted(int(match["number"]) for match in map(_IMAGE_NAME.match, os.listdir(folder)) if match)
        name = os.path.basename(folder)
        with tifffile.TiffFile(os.path.join(folder, f"{name}_1.tif")) as first_slice:
            rows, columns, channels = first_slice.pages[0].shape
        volumes.append(np.ones((channels, columns, rows, len(numbers)), dtype=np.float32))
    slices = sum(volume.shape[-1] for volume in volumes)
    return volumes, len(volumes), slices


def run_variant(variant: str, data: Path) -> dict[str, float | int | str]:
    """Load the dataset once with ``variant`` in this process and return its measurements."""
    if variant.startswith("loader"):
        import pipeline.discovery  # noqa: F401
        import transforms.io  # noqa: F401
    import numpy
    import tifffile  # noqa: F401

    rss_after_imports = _rss_mib()
    start = time.perf_counter()
    cpu_start = time.process_time()
    if variant.startswith("loader"):
        volumes, patients, slices = load_with_loader(data, dtype=numpy.uint8 if variant == "loader_uint8" else None)
    elif variant == "float32_memory":
        volumes, patients, slices = fill_float32_volumes(data)
    else:
        volumes, patients, slices = load_with_tifffile(data, maxworkers=1 if variant == "floor_serial" else None)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    peak = _peak_rss_mib()
    del volumes
    return {
        "variant": variant,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "patients": patients,
        "slices": slices,
        "peak_rss_mib": peak,
        "loading_mib": peak - rss_after_imports,
    }


def run_child(variant: str, data: Path) -> dict[str, float | int | str]:
    """Run one variant in a fresh Python process and record the load average around it."""
    load_before = os.getloadavg()[0]
    command = [sys.executable, __file__, "--data", str(data), "--variant", variant]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"The {variant} run failed with exit code {result.returncode}:\n{result.stderr}")
    measurement = json.loads(result.stdout.strip().splitlines()[-1])
    measurement["load_before"] = load_before
    measurement["load_after"] = os.getloadavg()[0]
    return measurement


def machine_description() -> str:
    cpu = platform.processor() or "unknown CPU"
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="utf-8") as handle:
        memory_kib = int(handle.readline().split()[1])
    return f"{os.cpu_count()} cores, {cpu}, {memory_kib / 2**20:.1f} GiB RAM, Python {platform.python_version()}"


def summarise(runs: list[dict]) -> str:
    """Return a Markdown table of the wall and CPU times and the memory of each variant, and the ratios."""
    lines = [
        "| variant | wall s median | wall s min | wall s max | CPU s median | peak RSS MiB | loading MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    medians = {}
    for variant in VARIANTS:
        chosen = [run for run in runs if run["variant"] == variant]
        seconds = [run["seconds"] for run in chosen]
        medians[variant] = statistics.median(seconds)
        lines.append(
            f"| {variant} | {medians[variant]:.2f} | {min(seconds):.2f} | {max(seconds):.2f} "
            f"| {statistics.median(run['cpu_seconds'] for run in chosen):.2f} "
            f"| {statistics.median(run['peak_rss_mib'] for run in chosen):.0f} "
            f"| {statistics.median(run['loading_mib'] for run in chosen):.0f} |"
        )
    loads = [run["load_before"] for run in runs] + [run["load_after"] for run in runs]
    lines.append("")
    cpu_medians = {
        variant: statistics.median(run["cpu_seconds"] for run in runs if run["variant"] == variant)
        for variant in VARIANTS
    }
    for loader, floor in (("loader", "floor"), ("loader", "floor_serial"), ("loader_uint8", "floor_serial")):
        lines.append(
            f"Ratio of medians, {loader} / {floor}: wall time {medians[loader] / medians[floor]:.2f}, "
            f"CPU time {cpu_medians[loader] / cpu_medians[floor]:.2f}"
        )
    lines.append(f"1-minute load average during the runs: {min(loads):.2f} to {max(loads):.2f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", required=True, type=Path, help="kaggle_3m folder with one folder per patient")
    parser.add_argument("--repeat", type=int, default=5, help="measured runs of each variant (default: 5)")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.variant:
        print(json.dumps(run_variant(args.variant, args.data)))
        return 0
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    if not args.data.is_dir():
        parser.error(f"--data {args.data} is not a folder. Give a kaggle_3m folder.")

    print(f"Machine: {machine_description()}")
    print(f"Uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    for variant in VARIANTS:
        run_child(variant, args.data)

    runs = []
    for index in range(args.repeat):
        # Rotate the order so that no variant always runs first.
        order = VARIANTS[index % len(VARIANTS):] + VARIANTS[: index % len(VARIANTS)]
        for variant in order:
            run = run_child(variant, args.data)
            runs.append(run)
            print(
                f"run {index + 1} {variant}: {run['seconds']:.2f} s, CPU {run['cpu_seconds']:.2f} s, "
                f"{run['patients']} patients, "
                f"{run['slices']} slices, peak RSS {run['peak_rss_mib']:.0f} MiB, "
                f"load {run['load_before']:.2f} -> {run['load_after']:.2f}",
                flush=True,
            )
    print()
    print(summarise(runs))
    print(f"Uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
