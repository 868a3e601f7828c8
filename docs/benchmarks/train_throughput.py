"""Measure training throughput of the bundle's engine against a bare PyTorch loop on the same batches.

Both variants train the UNet of ``configs/train.json`` with its loss and optimizer.
The engine variant runs the config's ``SupervisedTrainer`` with its data loader,
so random sampling and augmentation happen during training. The bare loop first
draws the same number of batches from that loader, keeps them in memory, then
times forward, backward and optimizer steps only. The difference is the cost of
the engine and the data pipeline.

Usage::

    python docs/benchmarks/train_throughput.py --data ../shared/data/kaggle_3m --epochs 5
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "lgg_mri_segmentation"


def build(data: str, output_dir: str, epochs: int) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": data, "output_dir": output_dir,
                   "epochs": epochs, "num_workers": 2})
    return parser


def time_engine(parser: ConfigParser) -> tuple[float, int]:
    trainer = parser.get_parsed_content("train#trainer")
    slices = 0

    def count(engine):
        nonlocal slices
        # SupervisedTrainer decollates each batch into a list of per-slice dictionaries.
        batch = engine.state.batch
        slices += len(batch) if isinstance(batch, list) else batch["image"].shape[0]

    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED, count)
    start = time.perf_counter()
    trainer.run()
    return time.perf_counter() - start, slices


def time_bare_loop(parser: ConfigParser, batches: list[dict]) -> float:
    network = parser.get_parsed_content("network")
    loss_function = parser.get_parsed_content("loss")
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=1e-5)
    device = parser.get_parsed_content("device")
    network.train()
    start = time.perf_counter()
    for batch in batches:
        image = batch["image"].as_tensor().to(device)
        label = batch["label"].as_tensor().to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_function(network(image), label)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--data", required=True, help="kaggle_3m folder")
    arguments.add_argument("--epochs", type=int, default=5, help="epochs of 8 iterations for each variant")
    options = arguments.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as folder:
        engine_seconds, engine_slices = time_engine(build(options.data, folder, options.epochs))

        parser = build(options.data, folder, options.epochs)
        dataloader = parser.get_parsed_content("train#dataloader")
        batches = [batch for _ in range(options.epochs) for batch in dataloader]
        bare_seconds = time_bare_loop(parser, batches)
        bare_slices = sum(batch["image"].shape[0] for batch in batches)

    result = {
        "engine_slices_per_second": engine_slices / engine_seconds,
        "bare_loop_slices_per_second": bare_slices / bare_seconds,
        "engine_seconds": engine_seconds,
        "bare_loop_seconds": bare_seconds,
        "slices": engine_slices,
    }
    result["engine_overhead_percent"] = 100 * (1 - result["engine_slices_per_second"] / result["bare_loop_slices_per_second"])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
