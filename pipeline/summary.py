"""Count slices and tumour pixels per patient of a Kaggle LGG dataset and draw overview figures.

The ``summary`` command writes three files to its output folder:

- ``patients.csv``: one row per patient with the columns ``patient``, ``site``
  (the TCGA tissue source site, the 2 characters after ``TCGA_``), ``slices``,
  ``tumour_slices`` (slices whose mask has at least one tumour pixel) and
  ``tumour_pixels``. The file contains no total row, so that its columns can be summed
  as they are. The command prints the totals instead.
- ``tumour_slices.png``: slices with and without tumour, for all patients together
  and stacked per patient.
- ``montage.png``: the FLAIR slice with the largest tumour area of each of the
  patients with the largest tumour volume, with the mask outline drawn over it.

Slices are shown as the TIFF files store them (row 0 at the top).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from pipeline.discovery import discover
from pipeline.io_utils import atomic_write_bytes, atomic_write_text, check_output_outside
from transforms.errors import DatasetError
from transforms.io import CHANNEL_NAMES, LoadPatientSlicesd
from transforms.slices import PatientSlices

__all__ = [
    "CSV_COLUMNS",
    "MONTAGE_FILE",
    "PATIENTS_FILE",
    "PatientSummary",
    "TUMOUR_SLICES_FILE",
    "register",
    "run",
    "summarise_dataset",
]

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("patient", "site", "slices", "tumour_slices", "tumour_pixels")
PATIENTS_FILE = "patients.csv"
TUMOUR_SLICES_FILE = "tumour_slices.png"
MONTAGE_FILE = "montage.png"

_FLAIR = CHANNEL_NAMES.index("FLAIR")
_SITE_PATTERN = re.compile(r"^TCGA_([A-Z0-9]{2})_")
_TUMOUR_COLOUR = "#d62728"
_NO_TUMOUR_COLOUR = "#9ecae1"
_MONTAGE_COLUMNS = 4


@dataclass
class PatientSummary:
    """Counts of one patient, and the slice with the largest tumour area for the montage.

    Attributes:
        patient: patient id (folder name).
        site: TCGA tissue source site code, or an empty string if the id does not start with ``TCGA_XX_``.
        slices: number of slices.
        tumour_slices: slices with at least one tumour pixel.
        tumour_pixels: tumour pixels over all slices.
        shown_slice: slice number ``n`` with the largest tumour area, or the middle
            slice for a patient without tumour.
        flair: FLAIR pixels of ``shown_slice`` in TIFF orientation ``[row, column]``.
        mask: mask pixels (0 or 1) of ``shown_slice`` in TIFF orientation.
    """

    patient: str
    site: str
    slices: int
    tumour_slices: int
    tumour_pixels: int
    shown_slice: int
    flair: np.ndarray
    mask: np.ndarray


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _site(patient: str) -> str:
    match = _SITE_PATTERN.match(patient)
    return match.group(1) if match else ""


def _summarise_patient(patient: PatientSlices) -> PatientSummary:
    """Load a patient's image and mask slices and count its tumour slices and pixels."""
    loader = LoadPatientSlicesd(keys=("image", "label"), dtype=np.uint8, slice_meta=False)
    volumes = loader({"image": patient, "label": patient})
    mask = volumes["label"].numpy()[0]
    pixels_per_slice = mask.sum(axis=(0, 1), dtype=np.int64)

    tumour_pixels = int(pixels_per_slice.sum())
    index = int(np.argmax(pixels_per_slice)) if tumour_pixels else mask.shape[-1] // 2

    # Volumes are (channel, x, y, slice) with x = TIFF column, so .T restores TIFF [row, column].
    return PatientSummary(
        patient=patient.patient,
        site=_site(patient.patient),
        slices=int(mask.shape[-1]),
        tumour_slices=int(np.count_nonzero(pixels_per_slice)),
        tumour_pixels=tumour_pixels,
        shown_slice=patient.numbers[index],
        flair=volumes["image"].numpy()[_FLAIR, :, :, index].T.copy(),
        mask=mask[:, :, index].T.copy(),
    )


def _csv_text(rows: list[PatientSummary]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([row.patient, row.site, row.slices, row.tumour_slices, row.tumour_pixels])
    return text.getvalue()


def _png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def _draw_tumour_slices(rows: list[PatientSummary]) -> Figure:
    """Draw one stacked bar for all patients and one per patient: slices with and without tumour."""
    with_tumour = np.array([row.tumour_slices for row in rows])
    without_tumour = np.array([row.slices - row.tumour_slices for row in rows])
    total_with, total_without = int(with_tumour.sum()), int(without_tumour.sum())

    width = min(40.0, max(7.0, 4.0 + 0.3 * len(rows)))
    figure = Figure(figsize=(width, 5.5), layout="constrained")
    overall, per_patient = figure.subplots(1, 2, width_ratios=[1.0, max(3.0, width - 3.0)])
    patients = _count(len(rows), "patient")
    figure.suptitle(f"Slices with and without tumour ({patients}, {total_with + total_without} slices)")

    overall.bar([0], [total_with], color=_TUMOUR_COLOUR)
    overall.bar([0], [total_without], bottom=[total_with], color=_NO_TUMOUR_COLOUR)
    if total_with:
        overall.text(0, total_with / 2, str(total_with), ha="center", va="center", color="white")
    if total_without:
        overall.text(0, total_with + total_without / 2, str(total_without), ha="center", va="center")
    overall.set_xticks([0], ["all patients"])
    overall.set_xlim(-0.8, 0.8)
    overall.set_ylabel("slices")
    overall.set_title("overall")
    overall.yaxis.set_major_locator(MaxNLocator(integer=True))

    positions = np.arange(len(rows))
    per_patient.bar(positions, with_tumour, color=_TUMOUR_COLOUR)
    per_patient.bar(positions, without_tumour, bottom=with_tumour, color=_NO_TUMOUR_COLOUR)
    per_patient.set_xticks(positions, [row.patient for row in rows], rotation=90, fontsize=7)
    per_patient.set_xlim(-0.6, len(rows) - 0.4)
    per_patient.set_xlabel("patient")
    per_patient.set_ylabel("slices")
    per_patient.set_title("per patient")
    per_patient.yaxis.set_major_locator(MaxNLocator(integer=True))

    handles = [
        Patch(color=_TUMOUR_COLOUR, label="with tumour"),
        Patch(color=_NO_TUMOUR_COLOUR, label="without tumour"),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=2)
    return figure


def _draw_montage(rows: list[PatientSummary], max_patients: int) -> Figure:
    """Draw the FLAIR slice with the largest tumour area of the patients with the most tumour pixels."""
    selected = sorted(rows, key=lambda row: (-row.tumour_pixels, row.patient))[:max_patients]
    columns = min(_MONTAGE_COLUMNS, len(selected))
    grid_rows = math.ceil(len(selected) / columns)

    figure = Figure(figsize=(max(7.0, 3.2 * columns), 3.5 * grid_rows + 1.0), layout="constrained")
    axes = figure.subplots(grid_rows, columns, squeeze=False).ravel()
    figure.suptitle(
        f"FLAIR slice with the largest tumour area\n{_count(len(selected), 'patient')} with the most tumour pixels"
    )

    for panel, row in zip(axes, selected):
        panel.imshow(row.flair, cmap="gray", interpolation="nearest")
        if row.mask.any():
            panel.contour(row.mask, levels=[0.5], colors=_TUMOUR_COLOUR, linewidths=1.0)
            caption = f"slice {row.shown_slice}, {int(row.mask.sum())} tumour pixels"
        else:
            caption = f"slice {row.shown_slice}, no tumour"
        panel.set_title(f"{row.patient}\n{caption}", fontsize=8)
        panel.set_axis_off()
    for panel in axes[len(selected):]:
        panel.set_axis_off()

    outline = Line2D([], [], color=_TUMOUR_COLOUR, linewidth=1.5, label="tumour mask outline")
    figure.legend(handles=[outline], loc="outside lower center")
    return figure


def _summarise(
    data: str | os.PathLike, out: str | os.PathLike, on_error: str, montage_patients: int
) -> tuple[dict[str, int], list[Path], list[tuple[str, str]]]:
    """Write the CSV and both figures, and return the totals, the written files and the skipped patients."""
    if montage_patients < 1:
        raise ValueError(f"montage_patients must be at least 1, got {montage_patients}.")
    check_output_outside(out, data)
    found = discover(data, on_error=on_error, require_masks=True)

    rows: list[PatientSummary] = []
    skipped = list(found.skipped)
    with logging_redirect_tqdm():
        for patient in tqdm(found.patients, desc="summary", unit="patient", disable=None):
            try:
                rows.append(_summarise_patient(patient))
            except DatasetError as error:
                if on_error == "raise":
                    raise
                logger.warning("Skipping patient %s: %s", patient.patient, error)
                skipped.append((patient.patient, str(error)))
    if not rows:
        first = f" First reason: {skipped[0][1]}" if skipped else ""
        raise DatasetError(
            f"No patient under {data} was summarised because all {len(skipped)} were skipped.{first} "
            "Fix or remove the invalid patients."
        )

    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise DatasetError(f"Output path {folder} exists and is not a folder. Choose another output folder.")
    written = [atomic_write_text(folder / PATIENTS_FILE, _csv_text(rows))]
    written.append(atomic_write_bytes(folder / TUMOUR_SLICES_FILE, _png_bytes(_draw_tumour_slices(rows))))
    written.append(atomic_write_bytes(folder / MONTAGE_FILE, _png_bytes(_draw_montage(rows, montage_patients))))

    slices = sum(row.slices for row in rows)
    tumour_slices = sum(row.tumour_slices for row in rows)
    totals = {
        "patients": len(rows),
        "slices": slices,
        "tumour_slices": tumour_slices,
        "slices_without_tumour": slices - tumour_slices,
        "tumour_pixels": sum(row.tumour_pixels for row in rows),
        "skipped_patients": len(skipped),
    }
    logger.info("Wrote %s to %s", ", ".join(path.name for path in written), folder)
    return totals, written, skipped


def summarise_dataset(
    data: str | os.PathLike, out: str | os.PathLike, on_error: str = "raise", montage_patients: int = 8
) -> dict[str, int]:
    """Write ``patients.csv``, ``tumour_slices.png`` and ``montage.png`` for the dataset under ``data``.

    Args:
        data: a ``kaggle_3m`` folder, a folder above it, or the Kaggle ``archive.zip``.
        out: output folder, created if missing. It must not be ``data`` or lie inside it.
        on_error: ``"raise"`` stops at the first invalid patient, ``"skip"`` logs a
            warning and leaves the patient out of the files and the totals.
        montage_patients: maximum number of patients in the montage.

    Returns:
        Totals over the summarised patients: ``patients``, ``slices``,
        ``tumour_slices``, ``slices_without_tumour``, ``tumour_pixels``, and
        ``skipped_patients``, the number of patients left out.

    Raises:
        DatasetError: ``data`` is missing or invalid, ``out`` is inside the input,
            a patient is invalid (with ``on_error="raise"``), or no patient could be read.
        ValueError: ``montage_patients`` is below 1.
    """
    totals, _, skipped = _summarise(data, out, on_error, montage_patients)
    if skipped:
        logger.warning("Patients skipped (%d): %s", len(skipped), ", ".join(name for name, _ in skipped))
    return totals


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``summary`` command to the ``python -m pipeline`` parser."""
    parser = subparsers.add_parser(
        "summary",
        help="count slices and tumour pixels per patient and draw overview figures",
        description=(
            f"Write {PATIENTS_FILE} (slices, tumour slices and tumour pixels per patient), "
            f"{TUMOUR_SLICES_FILE} (slices with and without tumour) and {MONTAGE_FILE} (FLAIR slices "
            "with the largest tumours and their mask outlines), and print the totals."
        ),
    )
    parser.add_argument(
        "--data", required=True, type=Path, metavar="PATH",
        help="kaggle_3m folder, a folder above it, or the Kaggle archive.zip",
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="output folder, which must not lie inside the input"
    )
    parser.add_argument(
        "--on-error", choices=("raise", "skip"), default="raise",
        help="raise stops at the first invalid patient, skip leaves it out with a warning (default: raise)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Summarise the dataset for the ``summary`` command and print the totals and skipped patients."""
    totals, written, skipped = _summarise(args.data, args.out, args.on_error, montage_patients=8)
    for path in written:
        print(f"Wrote {path}")
    print(
        f"Total: {_count(totals['patients'], 'patient')}, {totals['slices']} slices, "
        f"{totals['tumour_slices']} with tumour, {totals['slices_without_tumour']} without, "
        f"{totals['tumour_pixels']} tumour pixels"
    )
    if skipped:
        print(f"Skipped {_count(len(skipped), 'patient')}:")
        for name, reason in skipped:
            print(f"  {name}: {reason}")
    return 0
