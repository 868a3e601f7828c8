"""Post-processing of predicted tumour masks and probabilities: connected components, flip TTA, ensembles.

The mask functions work on one patient's binary volume ``(x, y, slices)`` or
``(1, x, y, slices)``, where any non-zero voxel is foreground. Connectivity is given
as a 3D neighbourhood size: 6 (voxels sharing a face), 18 (a face or an edge) or 26
(a face, an edge or a corner).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch
from monai.transforms import KeepLargestConnectedComponent
from monai.utils import convert_to_dst_type
from scipy import ndimage

__all__ = ["ensemble_mean", "flip_tta", "keep_largest_component", "remove_small_components"]

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

# Neighbourhood size -> maximum number of orthogonal steps between neighbours, the
# ``connectivity`` argument of MONAI, scikit-image and scipy.ndimage.generate_binary_structure.
NEIGHBOURHOOD_STEPS = {6: 1, 18: 2, 26: 3}


def keep_largest_component(mask: ArrayT, connectivity: int = 26) -> ArrayT:
    """Remove every connected component of the mask except the largest one.

    Uses MONAI's ``KeepLargestConnectedComponent``. When two components have the same
    size, which one is kept is not defined. An empty mask is returned empty.

    Args:
        mask: binary volume ``(x, y, slices)`` or ``(1, x, y, slices)``, numpy or torch.
        connectivity: 3D neighbourhood that joins voxels into one component: 6, 18 or 26.
            The default 26 matches MONAI's default full connectivity.

    Returns:
        A mask of the same type, shape and dtype as ``mask``, with values 0 and 1.

    Raises:
        ValueError: the shape or the connectivity is invalid.
    """
    steps = _neighbourhood_steps(connectivity)
    volume = _as_channel_first(mask)

    if isinstance(volume, torch.Tensor):
        foreground = (volume != 0).to(torch.uint8)
    else:
        foreground = (volume != 0).astype(np.uint8)
    transform = KeepLargestConnectedComponent(applied_labels=[1], is_onehot=False, connectivity=steps)
    largest = transform(foreground)

    output, *_ = convert_to_dst_type(largest.reshape(mask.shape), dst=mask, dtype=mask.dtype)
    return output


def remove_small_components(mask: ArrayT, min_voxels: int, connectivity: int = 26) -> ArrayT:
    """Remove connected components with fewer than ``min_voxels`` voxels.

    Components of exactly ``min_voxels`` voxels are kept.

    Args:
        mask: binary volume ``(x, y, slices)`` or ``(1, x, y, slices)``, numpy or torch.
        min_voxels: smallest component size to keep, in voxels. 0 or 1 keeps everything.
        connectivity: 3D neighbourhood that joins voxels into one component: 6, 18 or 26.

    Returns:
        A mask of the same type, shape and dtype as ``mask``, with values 0 and 1.

    Raises:
        ValueError: the shape, ``min_voxels`` or the connectivity is invalid.
    """
    if min_voxels < 0:
        raise ValueError(f"min_voxels is {min_voxels}, expected a component size of 0 or more voxels.")
    steps = _neighbourhood_steps(connectivity)
    volume = _as_channel_first(mask)

    # NOTE: MONAI 1.6.1 RemoveSmallObjects with scikit-image 0.26.0 also removes components of
    # exactly min_size voxels, unlike its documentation, so components are counted with scipy here.
    if isinstance(volume, torch.Tensor):
        foreground = volume[0].detach().cpu().numpy() != 0
    else:
        foreground = np.asarray(volume[0]) != 0
    structure = ndimage.generate_binary_structure(3, steps)
    labels, _ = ndimage.label(foreground, structure=structure)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    filtered = keep[labels]

    output, *_ = convert_to_dst_type(filtered.reshape(mask.shape), dst=mask, dtype=mask.dtype)
    return output


def flip_tta(
    predict_fn: Callable[[ArrayT], ArrayT],
    image: ArrayT,
    flips: Sequence[Sequence[int]] = ((0,),),
    spatial_dims: int = 3,
) -> ArrayT:
    """Average the predicted probabilities over the unflipped image and flipped copies of it.

    For each entry of ``flips`` the image is flipped along those spatial axes, passed to
    ``predict_fn``, and the output is flipped back before averaging, so the result is
    aligned with ``image``. The unflipped image is always included, and the mean is
    taken over ``len(flips) + 1`` predictions. Spatial axis 0 is ``x``, which runs left
    to right in volumes loaded by ``transforms.io``, so the default adds the left-right
    mirror image.

    ``predict_fn`` must return probabilities (after softmax or sigmoid), because an
    average of logits is a different result. Its output must keep the spatial axes of its
    input as the trailing ``spatial_dims`` axes, and the leading axes may differ.

    Example::

        probabilities = flip_tta(lambda x: torch.softmax(inferer(x, network), dim=1), batch["image"])

    Args:
        predict_fn: maps an image to class probabilities, for example an inferer followed by softmax.
        image: numpy array or torch tensor whose last ``spatial_dims`` axes are spatial,
            such as ``(batch, channel, x, y, slices)``.
        flips: groups of spatial axes (0-based, counted from the first spatial axis) to flip
            together, one prediction per group. ``()`` runs the unflipped prediction only.
        spatial_dims: number of trailing spatial axes of ``image`` and of the output.

    Returns:
        The mean probabilities, of the same type as the output of ``predict_fn``.

    Raises:
        ValueError: a flip axis is outside ``0 .. spatial_dims - 1`` or repeated, or the
            flipped predictions have different shapes.
    """
    if image.ndim < spatial_dims:
        raise ValueError(f"image has {image.ndim} axes, fewer than spatial_dims={spatial_dims}.")
    for axes in flips:
        if not axes or len(set(axes)) != len(axes) or not all(0 <= axis < spatial_dims for axis in axes):
            raise ValueError(
                f"Invalid flip {tuple(axes)}: give distinct spatial axes between 0 and {spatial_dims - 1}, "
                "for example (0,) for a left-right flip."
            )

    reference = predict_fn(image)
    total = _as_float_array(reference)

    for axes in flips:
        flipped_image = _flip(image, [image.ndim - spatial_dims + axis for axis in axes])
        output = predict_fn(flipped_image)
        if tuple(output.shape) != tuple(reference.shape):
            raise ValueError(
                f"predict_fn returned shape {tuple(output.shape)} for the image flipped along {tuple(axes)}, "
                f"but {tuple(reference.shape)} for the unflipped image."
            )
        total = total + _flip(output, [output.ndim - spatial_dims + axis for axis in axes])

    return total / (len(flips) + 1)


def ensemble_mean(prob_list: Sequence[ArrayT]) -> ArrayT:
    """Average the probability maps of several models, voxel by voxel.

    Args:
        prob_list: probability maps of equal shape, all numpy arrays or all torch tensors,
            each already converted from logits (softmax or sigmoid).

    Returns:
        The mean map, of the same type as the inputs.

    Raises:
        ValueError: ``prob_list`` is empty or the shapes differ.
        TypeError: numpy arrays and torch tensors are mixed.
    """
    if len(prob_list) == 0:
        raise ValueError("prob_list is empty. Pass the probability maps of at least one model.")
    first = prob_list[0]
    for index, probabilities in enumerate(prob_list):
        if isinstance(probabilities, torch.Tensor) != isinstance(first, torch.Tensor):
            raise TypeError(
                f"prob_list[{index}] is {type(probabilities).__name__} but prob_list[0] is "
                f"{type(first).__name__}. Convert all maps to torch tensors or all to numpy arrays."
            )
        if tuple(probabilities.shape) != tuple(first.shape):
            raise ValueError(
                f"prob_list[{index}] has shape {tuple(probabilities.shape)} but prob_list[0] has "
                f"{tuple(first.shape)}. Predict every model on the same image grid."
            )

    total = _as_float_array(first)
    for probabilities in prob_list[1:]:
        total = total + probabilities
    return total / len(prob_list)


def _neighbourhood_steps(connectivity: int) -> int:
    if connectivity not in NEIGHBOURHOOD_STEPS:
        raise ValueError(f"connectivity {connectivity} is invalid, expected 6, 18 or 26 (3D neighbourhood size).")
    return NEIGHBOURHOOD_STEPS[connectivity]


def _as_channel_first(mask: ArrayT) -> ArrayT:
    if mask.ndim == 4 and mask.shape[0] == 1:
        return mask
    if mask.ndim == 3:
        return mask[None]
    raise ValueError(
        f"mask has shape {tuple(mask.shape)}, expected (x, y, slices) or (1, x, y, slices). "
        "Post-process one patient's single-channel mask at a time."
    )


def _as_float_array(array: ArrayT) -> ArrayT:
    """Copy ``array`` to float32, or keep its wider float dtype, so integer and float16 maps are summed in float32."""
    if isinstance(array, torch.Tensor):
        return array.to(torch.promote_types(array.dtype, torch.float32), copy=True)
    return np.array(array, dtype=np.promote_types(array.dtype, np.float32))


def _flip(array: ArrayT, dims: list[int]) -> ArrayT:
    if isinstance(array, torch.Tensor):
        return torch.flip(array, dims)
    # np.flip returns a view with negative strides, which torch.from_numpy rejects.
    return np.flip(array, dims).copy()
