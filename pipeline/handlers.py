"""Ignite handlers for the bundle's training workflow that MONAI does not provide.

Each handler has one job and is attached to an engine with ``attach(engine)``,
so bundle configs can list them beside MONAI's handlers.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

__all__ = [
    "BestMetricState",
    "BestModelSaver",
    "LatestCheckpointSaver",
    "EarlyStopOnMetric",
    "LearningRateLogger",
    "OverlayImageHandler",
    "ValidateAtEnd",
    "overlay_rgb",
]

logger = logging.getLogger(__name__)


class LearningRateLogger:
    """Write the learning rate that each epoch trains with to TensorBoard, at the epoch's start.

    Example::

        LearningRateLogger(optimizer, SummaryWriter("runs/x")).attach(trainer)
    """

    def __init__(self, optimizer: torch.optim.Optimizer, summary_writer: Any, tag: str = "learning_rate") -> None:
        self.optimizer = optimizer
        self.summary_writer = summary_writer
        self.tag = tag

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.summary_writer.add_scalar(self.tag, self.optimizer.param_groups[0]["lr"], engine.state.epoch)
        self.summary_writer.flush()


def overlay_rgb(image: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray | None) -> np.ndarray:
    """Draw mask outlines over a greyscale slice; return uint8 ``(3, rows, columns)``.

    ``image``, ``truth`` and ``prediction`` are 2D arrays in the same orientation.
    Ground truth is drawn in green and the prediction in red; where the two outlines
    meet the pixel is yellow.
    """
    low, high = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    grey = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    rgb = np.stack([grey, grey, grey], axis=0)
    for mask, channel in ((truth, 1), (prediction, 0)):
        if mask is None:
            continue
        edge = _outline(mask > 0)
        rgb[:, edge] *= 0.3
        rgb[channel, edge] = 1.0
    return (rgb * 255).round().astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, mode="constant")
    interior = (
        padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    )
    return mask & ~interior


class OverlayImageHandler:
    """Write one fixed validation patient's FLAIR slice with the true and predicted outlines to TensorBoard.

    The patient is the first of the evaluator's data loader, which must not
    shuffle. The slice is the one with the largest true tumour area (the middle
    slice when there is none). The image goes under ``tag`` at the evaluator's
    epoch, which MONAI's ``ValidationHandler`` sets to the trainer's epoch.

    Args:
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter``.
        channel: the image channel to show; 1 is FLAIR in the Kaggle RGB order.
        tag: the TensorBoard image tag.
    """

    def __init__(self, summary_writer: Any, channel: int = 1, tag: str = "validation/flair_truth_prediction") -> None:
        self.summary_writer = summary_writer
        self.channel = channel
        self.tag = tag

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=1), self)

    def __call__(self, engine: Engine) -> None:
        # MONAI engines decollate batch and output into lists of per-volume dictionaries.
        batch = engine.state.batch[0] if isinstance(engine.state.batch, list) else engine.state.batch
        output = engine.state.output[0] if isinstance(engine.state.output, list) else engine.state.output
        image = batch["image"]
        if not isinstance(engine.state.batch, list):
            image = image[0]
        truth = _foreground(output.get("label"))
        prediction = _foreground(output.get("pred"))
        if image.ndim != 4:
            logger.debug("OverlayImageHandler expects (C, x, y, slices) volumes; got %s", tuple(image.shape))
            return
        if truth is not None and truth.any():
            index = int(truth.reshape(-1, truth.shape[-1]).sum(0).argmax())
        else:
            index = image.shape[-1] // 2
        channel = min(self.channel, image.shape[0] - 1)
        # Volumes are (x, y, slice); transposing a slice gives the TIFF's (row, column) view.
        flair = image[channel, ..., index].detach().float().cpu().numpy().T
        picture = overlay_rgb(
            flair,
            None if truth is None else truth[..., index].T,
            None if prediction is None else prediction[..., index].T,
        )
        self.summary_writer.add_image(self.tag, picture, engine.state.epoch, dataformats="CHW")
        self.summary_writer.flush()


def _foreground(volume: Any) -> np.ndarray | None:
    """Return the tumour mask ``(x, y, slices)`` of a one-hot or single-channel volume."""
    if volume is None:
        return None
    array = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if array.ndim == 4:
        array = array[1] if array.shape[0] > 1 else array[0]
    return array > 0.5


def save_atomically(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place.

    A process killed while saving leaves the previous file intact.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    try:
        torch.save(obj, temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


class LatestCheckpointSaver:
    """Save the whole training state as ``checkpoint_epoch=N.pt`` after every epoch, atomically.

    The two newest files are kept, so a process killed at any moment leaves at
    least one complete checkpoint to resume from.

    Example::

        LatestCheckpointSaver("run/checkpoints", {"model": net, "optimizer": opt, "trainer": trainer}).attach(trainer)
    """

    def __init__(self, save_dir: str | os.PathLike, save_dict: dict[str, Any], n_saved: int = 2) -> None:
        self.save_dir = Path(save_dir)
        self.checkpoint = Checkpoint(
            save_dict,
            DiskSaver(str(save_dir), atomic=True, require_empty=False),
            filename_pattern="checkpoint_epoch={global_step}.{ext}",
            n_saved=n_saved,
            global_step_transform=lambda engine, _: engine.state.epoch,
        )

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._adopt_existing)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.checkpoint)

    def _adopt_existing(self, engine: Engine) -> None:
        # A resumed run takes over the files of the interrupted one, so old checkpoints rotate out.
        found = []
        for path in self.save_dir.glob("checkpoint_epoch=*.pt"):
            epoch = path.stem.split("=", 1)[1]
            if epoch.isdigit():
                found.append((int(epoch), path.name))
        if found:
            self.checkpoint.load_state_dict({"_saved": sorted(found)})


class BestModelSaver:
    """Save the network's weights whenever the evaluator reaches a new best key metric.

    Attach it to the evaluator. MONAI's evaluator updates ``state.best_metric_epoch``
    before this handler runs, so a new best is an epoch equal to it. The file contains
    a plain ``state_dict`` and is replaced atomically.
    """

    def __init__(self, network: torch.nn.Module, save_dir: str | os.PathLike, filename: str = "model.pt") -> None:
        self.network = network
        self.path = Path(save_dir) / filename

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.best_metric_epoch != engine.state.epoch:
            return
        module = self.network.module if hasattr(self.network, "module") else self.network
        save_atomically(module.state_dict(), self.path)
        logger.info("Saved best model (%s %.4f at epoch %d) to %s",
                    engine.state.key_metric_name, engine.state.best_metric, engine.state.epoch, self.path)


class BestMetricState:
    """Save and restore the evaluator's best key metric inside a training checkpoint.

    Put it in the state that ``LatestCheckpointSaver`` saves and the resuming
    ``CheckpointLoader`` loads. A resumed run then keeps the best value and epoch
    reached before the interruption, so ``BestModelSaver`` only replaces the best
    model with a better one.
    """

    def __init__(self, evaluator: Engine) -> None:
        self.evaluator = evaluator

    def state_dict(self) -> dict[str, float]:
        state = self.evaluator.state
        return {
            "best_metric": float(getattr(state, "best_metric", -1.0)),
            "best_metric_epoch": int(getattr(state, "best_metric_epoch", -1)),
        }

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.evaluator.state.best_metric = float(state_dict["best_metric"])
        self.evaluator.state.best_metric_epoch = int(state_dict["best_metric_epoch"])


class EarlyStopOnMetric:
    """Stop training when the evaluator's key metric has not improved for ``patience`` validations.

    Attach it to the trainer; it listens to the evaluator, so validation rounds
    count, not epochs. ``patience`` 0 turns it off.
    """

    def __init__(self, evaluator: Engine, patience: int = 0, min_delta: float = 0.0) -> None:
        if patience < 0:
            raise ValueError(f"early_stop_patience must be 0 (off) or more, got {patience}.")
        self.evaluator = evaluator
        self.patience = patience
        self.min_delta = min_delta
        self.best = -float("inf")
        self.counter = 0

    def attach(self, engine: Engine) -> None:
        if self.patience > 0:
            self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._check, engine)

    def _check(self, evaluator: Engine, trainer: Engine) -> None:
        name = evaluator.state.key_metric_name if hasattr(evaluator.state, "key_metric_name") else None
        score = evaluator.state.metrics.get(name) if name else None
        if score is None:
            return
        if score > self.best + self.min_delta:
            self.best = score
            self.counter = 0
            return
        self.counter += 1
        if self.counter >= self.patience:
            logger.info("Early stopping: %s has not improved for %d validations.", name, self.counter)
            trainer.terminate()


class ValidateAtEnd:
    """Run the evaluator once more when training ends on an epoch that ``ValidationHandler`` skipped.

    With a validation interval above 1, the last epochs could otherwise end
    without a validation, and their best model would never be saved.
    """

    def __init__(self, validator: Engine, interval: int) -> None:
        self.validator = validator
        self.interval = interval

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch % self.interval != 0 and not engine.should_terminate:
            self.validator.run(engine.state.epoch)
