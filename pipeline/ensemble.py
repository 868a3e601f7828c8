"""Test-time augmentation and checkpoint ensembles as a network wrapper for the bundle's evaluator.

:class:`EnsembleNetwork` runs several networks on each input window, and optionally
on its left-right mirror image, and averages their softmax probabilities. It returns
the logarithm of the mean, so the bundle's ``Activationsd(softmax=True)`` step turns
its output back into exactly that mean. Inferers, post-processing and handlers of the
configs therefore stay the same with or without it.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence

import torch

from pipeline.bundle_support import load_checkpoint
from pipeline import postprocess

__all__ = ["EnsembleNetwork", "build_inference_network"]

logger = logging.getLogger(__name__)

# Probabilities are clamped to this before the logarithm, so an empty class gives a finite logit.
_MIN_PROBABILITY = 1e-12


class EnsembleNetwork(torch.nn.Module):
    """Average the softmax probabilities of several networks, each over the input and its flipped copies.

    The input is ``(batch, channel, *spatial)`` as an inferer passes it. The output has
    the networks' output shape and contains ``log(mean probability)``, so a softmax over
    the channel axis gives the mean probability back.

    Example::

        network = EnsembleNetwork([fold0, fold1], flip_axes=[0])
        probabilities = torch.softmax(network(batch), dim=1)

    Args:
        networks: networks with the same output shape, each returning logits.
        flip_axes: spatial axes (0 is ``x``, left to right in volumes of ``transforms.io``)
            to flip one at a time for test-time augmentation. Empty runs the input as it is.
    """

    def __init__(self, networks: Sequence[torch.nn.Module], flip_axes: Sequence[int] = ()) -> None:
        super().__init__()
        if not networks:
            raise ValueError("EnsembleNetwork needs at least one network.")
        self.networks = torch.nn.ModuleList(networks)
        self.flips = tuple((int(axis),) for axis in flip_axes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        spatial_dims = image.ndim - 2
        probabilities = []
        for network in self.networks:
            def predict(batch: torch.Tensor, network: torch.nn.Module = network) -> torch.Tensor:
                return torch.softmax(network(batch).float(), dim=1)

            probabilities.append(postprocess.flip_tta(predict, image, flips=self.flips, spatial_dims=spatial_dims))
        mean = postprocess.ensemble_mean(probabilities)
        return torch.log(mean.clamp_min(_MIN_PROBABILITY))


def build_inference_network(
    network: torch.nn.Module,
    checkpoints: Sequence[str | os.PathLike] = (),
    flip_tta: bool = False,
) -> torch.nn.Module:
    """Return ``network`` itself, or an :class:`EnsembleNetwork` when an ensemble or flip TTA is requested.

    Each extra checkpoint is loaded into a copy of ``network``, which must already hold
    the weights of the main checkpoint (the configs load it in ``initialize``).

    Args:
        network: the configured network, on its device.
        checkpoints: further ``model.pt`` files to average with ``network``.
        flip_tta: add the left-right mirror image (spatial axis 0) of every input.

    Raises:
        DatasetError: a checkpoint is missing or does not fit the network.
    """
    if not checkpoints and not flip_tta:
        return network

    members = [network]
    for path in checkpoints:
        member = copy.deepcopy(network)
        load_checkpoint(member, path)
        members.append(member)
    logger.info(
        "Inference averages %d network(s)%s.", len(members), " with left-right flip TTA" if flip_tta else ""
    )
    return EnsembleNetwork(members, flip_axes=(0,) if flip_tta else ())
