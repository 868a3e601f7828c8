"""Export the bundle's network to TorchScript and ONNX, and the ``python -m pipeline export`` command.

Both exports build ``network_def`` from the bundle's ``configs/inference.json``
and load a checkpoint into it with ``torch.load(..., weights_only=True)``. The
checkpoint is a plain ``state_dict`` or a training checkpoint with a ``model``
entry. The network is exported in eval mode, so dropout is off and batch
normalisation uses its running statistics. Files are written atomically, so an
interrupted export leaves no partial file.

The TorchScript file has the layout that ``python -m monai.bundle ckpt_export``
writes: the scripted network with the bundle's metadata and ``inference.json``
stored as extra files, readable with ``monai.data.load_net_with_metadata``. The
ONNX file has one input ``image`` of shape ``(batch, channels, 256, 256)`` and one
output ``pred`` with the two class logits, and its batch axis is dynamic.

Example::

    from pipeline.export import export_onnx
    export_onnx("bundles/lgg_mri_segmentation", "bundles/lgg_mri_segmentation/models/model.pt", "model.onnx")
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data import save_net_with_metadata
from monai.networks.utils import convert_to_torchscript

from pipeline.bundle_support import load_checkpoint
from pipeline.io_utils import atomic_write_bytes
from transforms.errors import DatasetError

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "build_network",
    "export_onnx",
    "export_torchscript",
    "register",
    "run",
]

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "pred"
_FORMATS = {"torchscript": "model.ts", "onnx": "model.onnx"}


def _read_bundle_config(bundle_dir: str | os.PathLike, overrides: dict[str, Any] | None) -> ConfigParser:
    """Read ``configs/inference.json`` and ``configs/metadata.json`` of a bundle and apply overrides.

    Raises:
        DatasetError: the bundle has no ``configs/inference.json``, or an override names an unknown key.
    """
    bundle = Path(bundle_dir).resolve()
    config_file = bundle / "configs" / "inference.json"
    if not config_file.is_file():
        raise DatasetError(
            f"Bundle config not found: {config_file}. Give the bundle folder, the one that contains configs/inference.json."
        )

    parser = ConfigParser()
    parser.read_config(str(config_file))
    meta_file = bundle / "configs" / "metadata.json"
    if meta_file.is_file():
        parser.read_meta(str(meta_file))
    parser["bundle_root"] = str(bundle)

    for key, value in (overrides or {}).items():
        if key not in parser:
            raise DatasetError(f"Unknown config key {key!r} in {config_file.name}. Check the --set option.")
        parser[key] = value
    return parser


def build_network(
    bundle_dir: str | os.PathLike, checkpoint: str | os.PathLike, overrides: dict[str, Any] | None = None
) -> torch.nn.Module:
    """Build the bundle's ``network_def`` on the CPU, load ``checkpoint`` into it and return it in eval mode.

    Args:
        bundle_dir: the bundle folder, which contains ``configs/inference.json``.
        checkpoint: a ``model.pt`` file.
        overrides: config values to change before the network is built, for example
            ``{"context_radius": 1}`` for a network trained on 2.5D input.

    Raises:
        DatasetError: the config is missing, or the checkpoint is missing, unreadable or
            made for another network shape.
    """
    return _load_network(_read_bundle_config(bundle_dir, overrides), checkpoint)


def _load_network(parser: ConfigParser, checkpoint: str | os.PathLike) -> torch.nn.Module:
    network = parser.get_parsed_content("network_def")
    load_checkpoint(network, checkpoint)
    return network.eval()


def export_torchscript(
    bundle_dir: str | os.PathLike,
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Script the network with ``torch.jit.script`` and save it with the bundle's metadata and config.

    The extra files are ``metadata.json`` (the bundle metadata plus MONAI, PyTorch and
    NumPy versions) and ``inference.json`` (the config with ``overrides`` applied).
    NOTE: the stored metadata describes the default 3-channel input even when
    ``overrides`` change ``context_radius``.

    Returns:
        The path of the written file.

    Raises:
        DatasetError: as for :func:`build_network`.
    """
    parser = _read_bundle_config(bundle_dir, overrides)
    scripted = convert_to_torchscript(_load_network(parser, checkpoint))

    config = {key: value for key, value in parser.get().items() if key != "_meta_"}
    buffer = io.BytesIO()
    save_net_with_metadata(
        scripted,
        buffer,
        meta_values=parser.get("_meta_", {}),
        more_extra_files={"inference.json": json.dumps(config).encode("utf-8")},
    )
    path = atomic_write_bytes(output, buffer.getvalue())
    logger.info("Exported TorchScript network from %s to %s", checkpoint, path)
    return path


def export_onnx(
    bundle_dir: str | os.PathLike,
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Export the network to ONNX with a dynamic batch axis.

    The spatial size is fixed to the config's ``roi_size``, the slice window that
    inference feeds to the network (256x256 by default).

    Args:
        bundle_dir, checkpoint, overrides: as for :func:`build_network`.
        output: the ``.onnx`` file to write.
        opset: the ONNX operator set version.

    Returns:
        The path of the written file.

    Raises:
        DatasetError: as for :func:`build_network`.
    """
    parser = _read_bundle_config(bundle_dir, overrides)
    network = _load_network(parser, checkpoint)
    channels = int(parser.get_parsed_content("in_channels"))
    roi_size = [int(size) for size in parser.get_parsed_content("roi_size")]
    example = torch.zeros(1, channels, *roi_size)

    # NOTE: torch 2.13's default exporter (dynamo=True) needs the onnxscript package, which
    # this project does not install, so the TorchScript-based exporter is used. PyTorch has
    # deprecated it, and a later release may remove it.
    buffer = io.BytesIO()
    torch.onnx.export(
        network,
        (example,),
        buffer,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    path = atomic_write_bytes(output, buffer.getvalue())
    logger.info("Exported ONNX network (opset %d) from %s to %s", opset, checkpoint, path)
    return path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` command to the ``python -m pipeline`` parser."""
    from pipeline.bundle_runner import default_bundle_dir

    parser = subparsers.add_parser(
        "export",
        help="export the bundle's network to TorchScript or ONNX",
        description=(
            "Build the network of the bundle's configs/inference.json, load a checkpoint and write "
            "a TorchScript (models/model.ts) or ONNX (models/model.onnx) file."
        ),
    )
    parser.add_argument("--format", required=True, choices=sorted(_FORMATS), help="the export format")
    parser.add_argument(
        "--bundle", default=str(default_bundle_dir()), help="bundle folder (default: the one in this repository)"
    )
    parser.add_argument("--checkpoint", default=None, help="weights to export (default: BUNDLE/models/model.pt)")
    parser.add_argument(
        "--out", default=None, help="file to write (default: BUNDLE/models/model.ts or BUNDLE/models/model.onnx)"
    )
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX operator set version (default: {DEFAULT_OPSET})"
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="inference.json override, for example --set context_radius=1 for a 2.5D network",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export the network for the ``export`` command and print the file written."""
    from pipeline.bundle_runner import parse_set_options

    bundle = Path(args.bundle)
    checkpoint = Path(args.checkpoint) if args.checkpoint else bundle / "models" / "model.pt"
    output = Path(args.out) if args.out else bundle / "models" / _FORMATS[args.format]
    overrides = parse_set_options(args.set)

    if args.format == "onnx":
        path = export_onnx(bundle, checkpoint, output, opset=args.opset, overrides=overrides)
    else:
        path = export_torchscript(bundle, checkpoint, output, overrides=overrides)
    print(f"Exported {args.format} network to {path}")
    return 0
