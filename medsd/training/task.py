"""The contract between the training core and a model family: :class:`TrainingTask` and :class:`BatchSource`."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@runtime_checkable
class BatchSource(Protocol):
    """A dataset that hands out whole batches on a device (e.g. ``UInt8ImageCache``): the core slices it by
    index instead of running a ``DataLoader``."""

    def __len__(self) -> int: ...

    def get_batch(self, indices: list[int], device: torch.device) -> dict[str, Any]: ...


@runtime_checkable
class MovableBatchSource(BatchSource, Protocol):
    """A :class:`BatchSource` that can move its storage to the training device first."""

    def to(self, device: torch.device) -> Any: ...


class TrainingTask(abc.ABC):
    """One model family's part of training: modules, data, the loss of a batch, validation, the saved model.

    The core (:class:`medsd.training.core.Trainer`) owns everything else.
    """

    ema_module: str | None = None
    """Name (in :meth:`modules`) of the module tracked with EMA when ``use_ema`` is set."""

    @abc.abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Modules with trainable parameters; they are prepared by accelerate and checkpointed."""

    def setup(self, accelerator: Any) -> None:  # noqa: B027 - optional hook
        """Place frozen parts (VAE, text encoder, caches) on ``accelerator.device``. Optional."""

    def trainable_parameters(self, modules: dict[str, nn.Module]) -> list[nn.Parameter]:
        return [p for m in modules.values() for p in m.parameters() if p.requires_grad]

    @abc.abstractmethod
    def train_dataset(self) -> torch.utils.data.Dataset | BatchSource:
        """A map-style or iterable dataset, or a :class:`BatchSource`."""

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return default_collate(items)

    @abc.abstractmethod
    def loss(self, batch: dict[str, Any], modules: dict[str, nn.Module], accelerator: Any) -> torch.Tensor:
        """Scalar loss of one micro-batch."""

    def validate(self, modules: dict[str, nn.Module], step: int, accelerator: Any) -> list[Any]:
        """Images (PIL) rendered from the unwrapped (EMA) modules. Must not use the global RNG."""
        return []

    @abc.abstractmethod
    def save(self, output_dir: Path, modules: dict[str, nn.Module], accelerator: Any) -> None:
        """Write the final model (``save_pretrained``) from the unwrapped (EMA) modules."""


def default_collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch


def diffusion_target(
    scheduler: Any, prediction_type: str, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """What the network learns to predict for ``prediction_type`` (as diffusers' schedulers read it)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(clean, noise, t)
    if prediction_type == "sample":
        return clean
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
