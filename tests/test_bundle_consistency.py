"""The standalone inference config must build the same network and preprocessing as the training config."""

from __future__ import annotations

import json
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent / "bundles" / "lgg_mri_segmentation" / "configs"


def load(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


def test_inference_network_matches_training() -> None:
    train, inference = load("train.json"), load("inference.json")
    assert inference["network_def"] == train["network_def"]
    for key in ("spatial_dims", "context_radius", "out_channels", "strides", "roi_size", "in_channels"):
        assert inference[key] == train[key], key


def test_inference_preprocessing_matches_training() -> None:
    train_steps = load("train.json")["preprocessing"]
    inference_steps = load("inference.json")["preprocessing"]["transforms"]
    assert [step["_target_"] for step in inference_steps] == [step["_target_"] for step in train_steps]
    normalise_train = next(s for s in train_steps if s["_target_"] == "NormalizeIntensityd")
    normalise_inference = next(s for s in inference_steps if s["_target_"] == "NormalizeIntensityd")
    assert normalise_inference["nonzero"] == normalise_train["nonzero"]
    assert normalise_inference["channel_wise"] == normalise_train["channel_wise"]
    stack_train = next(s for s in train_steps if s["_target_"] == "transforms.StackNeighborSlicesd")
    stack_inference = next(s for s in inference_steps if s["_target_"] == "transforms.StackNeighborSlicesd")
    assert stack_inference["radius"] == stack_train["radius"]
