"""Transforms that prepare whole-patient volumes for 2D and 2.5D slice networks."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

__all__ = ["StackNeighborSlices", "StackNeighborSlicesd"]


class StackNeighborSlices(Transform):
    """Add the neighbouring slices of every slice as extra channels (2.5D input).

    A volume ``(C, x, y, D)`` becomes ``(C * (2 * radius + 1), x, y, D)``: channel
    block ``k`` contains the slice at offset ``k - radius``, so block ``radius`` is the
    slice itself. The first and last slices repeat at the volume's ends. After this
    transform, any 2D slice of the volume carries its own context, so a 2D network
    and ``SliceInferer`` work unchanged.

    Args:
        radius: number of neighbours on each side; 0 returns the input.
    """

    def __init__(self, radius: int = 1) -> None:
        if radius < 0:
            raise ValueError(f"radius must be 0 or more, got {radius}.")
        self.radius = radius

    def __call__(self, volume: torch.Tensor) -> torch.Tensor:
        if self.radius == 0:
            return volume
        depth = volume.shape[-1]
        blocks = []
        for offset in range(-self.radius, self.radius + 1):
            index = torch.clamp(torch.arange(depth, device=volume.device) + offset, 0, depth - 1)
            blocks.append(volume.index_select(-1, index))
        stacked = torch.cat([torch.as_tensor(b) for b in blocks], dim=0)
        if isinstance(volume, MetaTensor):
            stacked = MetaTensor(stacked, meta=dict(volume.meta))
            names = volume.meta.get("channel_names")
            if names:
                stacked.meta["channel_names"] = [
                    f"{name} (slice {offset:+d})" for offset in range(-self.radius, self.radius + 1) for name in names
                ]
        return stacked


class StackNeighborSlicesd(MapTransform):
    """Dictionary version of :class:`StackNeighborSlices`."""

    def __init__(self, keys: KeysCollection = ("image",), radius: int = 1, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.stacker = StackNeighborSlices(radius)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.stacker(d[key])
        return d
