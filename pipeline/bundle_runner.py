"""Run the bundle's configs from the command line, the same way ``python -m monai.bundle run`` does.

The CLI adds no training, evaluation or inference logic of its own: it picks the
config files, checks the override keys and types against them, and runs
``monai.bundle.ConfigWorkflow``.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.bundle_support import BUNDLE_NAME
from pipeline.cli import UserError
from pipeline.io_utils import atomic_write_text
from transforms.errors import DatasetError

__all__ = ["default_bundle_dir", "parse_set_options", "run_config"]

logger = logging.getLogger(__name__)


def default_bundle_dir() -> Path:
    """Return the bundle folder shipped in this repository."""
    return Path(__file__).resolve().parent.parent / "bundles" / BUNDLE_NAME


def parse_set_options(pairs: Sequence[str] | None) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` options; a VALUE that parses as JSON becomes that value, anything else a string.

    Raises:
        UserError: an option has no ``=``.
    """
    overrides: dict[str, Any] = {}
    for pair in pairs or []:
        key, separator, text = pair.partition("=")
        if not separator or not key:
            raise UserError(f"Invalid --set {pair!r}: expected KEY=VALUE, for example --set learning_rate=0.0005.")
        try:
            overrides[key] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key] = text
    return overrides


def _check_overrides(parser: Any, overrides: dict[str, Any], config_files: Sequence[Path]) -> None:
    known = list(parser.get().keys())
    for key, value in overrides.items():
        if key not in parser:
            close = difflib.get_close_matches(key.split("#")[0], known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"Unknown config key {key!r} in {', '.join(str(f.name) for f in config_files)}.{hint}")
        default = parser[key]
        if isinstance(default, str) and default.startswith(("$", "@", "%")):
            continue
        if isinstance(default, bool) != isinstance(value, bool) or (
            isinstance(default, (int, float)) and not isinstance(value, (int, float))
        ) or (isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float)) or (
            isinstance(default, (list, str)) and not isinstance(value, type(default))
        ):
            raise UserError(
                f"Invalid value {value!r} for {key}: expected a {type(default).__name__} like the default {default!r}."
            )


def run_config(
    bundle_dir: str | os.PathLike,
    config_names: Sequence[str],
    overrides: dict[str, Any],
    workflow_type: str | None = None,
    save_config_to: str | os.PathLike | None = None,
) -> Any:
    """Run bundle config files merged in order, with overrides, and return the workflow.

    Args:
        bundle_dir: the bundle folder (contains ``configs/``).
        config_names: config file names in ``configs/``, merged in order.
        overrides: config ids and values, as ``--id value`` on the monai.bundle command line.
        workflow_type: ``"train"`` or ``"infer"`` for MONAI's property checks, or None.
        save_config_to: write the merged config with the overrides applied to this JSON file.

    Raises:
        UserError: the bundle or a config file is missing, or an override key or type is invalid.
    """
    from monai.bundle import ConfigParser, ConfigWorkflow

    bundle = Path(bundle_dir)
    configs = bundle / "configs"
    files = [configs / name for name in config_names]
    for file in files:
        if not file.is_file():
            raise UserError(f"Bundle config not found: {file}. Check --bundle (a folder with configs/{file.name}).")

    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    _check_overrides(parser, overrides, files)

    values = dict(overrides, bundle_root=str(bundle))
    logging_file = configs / "logging.conf"
    # The bundle's logging.conf sets the root level to INFO; keep the level the CLI chose (-v for DEBUG).
    root_level = logging.getLogger().level
    workflow = ConfigWorkflow(
        config_file=[str(f) for f in files],
        meta_file=str(configs / "metadata.json") if (configs / "metadata.json").is_file() else None,
        logging_file=str(logging_file) if logging_file.is_file() else False,
        workflow_type=workflow_type,
        **values,
    )
    logging.getLogger().setLevel(root_level)
    try:
        workflow.initialize()
        if save_config_to is not None:
            merged = workflow.parser.get()
            content = {k: v for k, v in merged.items() if k != "_meta_"}
            atomic_write_text(save_config_to, json.dumps(content, indent=4, default=str) + "\n")
        workflow.run()
        workflow.finalize()
    except Exception as error:
        user_error = _user_error_cause(error)
        if user_error is None:
            raise
        raise user_error from None
    return workflow


def _user_error_cause(error: BaseException) -> BaseException | None:
    """Return the input error that a config expression raised, unwrapped from MONAI's RuntimeError chain."""
    seen = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, (UserError, DatasetError)):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
