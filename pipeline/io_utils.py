"""Small file helpers shared by the commands: atomic writes and output-folder checks."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from transforms.errors import DatasetError

__all__ = ["atomic_write_bytes", "atomic_write_text", "check_output_outside"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        # mkstemp creates the file readable by its owner only; give it the usual permissions.
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8, atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def check_output_outside(output_dir: str | os.PathLike, input_path: str | os.PathLike) -> None:
    """Raise if ``output_dir`` is the input folder or lies inside it, so outputs never mix with inputs.

    Raises:
        DatasetError: the output folder equals or lies inside the input folder.
    """
    output = Path(os.path.realpath(output_dir))
    source = Path(os.path.realpath(input_path))
    if source.is_file():
        source = source.parent
    if output == source or source in output.parents:
        raise DatasetError(
            f"Output folder {output_dir} is inside the input folder {input_path}. "
            "Choose an output folder outside the dataset so that inputs are never overwritten."
        )
