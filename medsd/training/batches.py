"""Deterministic, resumable streams of training batches: device-sliced, through a DataLoader, or streamed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from .task import BatchSource, MovableBatchSource, TrainingTask


class BatchIndexStream:
    """Deterministic, resumable batch order: epoch ``e`` is a permutation seeded by ``seed + e``.

    Micro-batch ``k`` is always the same indices, so a resumed run sees exactly the data it would
    have seen; each process takes its own slice of every global batch.
    """

    def __init__(self, length: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        global_batch = batch_size * world
        if length < global_batch:
            raise ValueError(
                f"dataset has {length} images, fewer than one global batch ({batch_size} x {world} processes)"
            )
        self.length, self.batch_size, self.seed, self.rank, self.world = length, batch_size, seed, rank, world
        self.batches_per_epoch = length // global_batch

    def indices(self, micro_step: int) -> list[int]:
        epoch, within = divmod(micro_step, self.batches_per_epoch)
        perm = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + epoch))
        start = (within * self.world + self.rank) * self.batch_size
        return perm[start : start + self.batch_size].tolist()

    def iterate(self, start_micro_step: int) -> Iterator[list[int]]:
        k = start_micro_step
        while True:
            yield self.indices(k)
            k += 1


def batch_stream(
    dataset: Any, task: TrainingTask, config: Any, accelerator: Any, start_micro: int
) -> Iterator[dict[str, Any]]:
    """Micro-batches on ``accelerator.device`` from micro-step ``start_micro`` on, whatever the dataset kind."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return stream_batches(dataset, task, config, accelerator, start_micro)
    stream = _index_stream(dataset, config, accelerator)
    if isinstance(dataset, BatchSource) and config.cache_images_on_device:
        if isinstance(dataset, MovableBatchSource):
            dataset = dataset.to(accelerator.device)
        return (dataset.get_batch(idx, accelerator.device) for idx in stream.iterate(start_micro))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=stream.iterate(start_micro),  # type: ignore[arg-type]
        collate_fn=task.collate,
        num_workers=config.dataloader_num_workers,
        pin_memory=accelerator.device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed),
    )
    return (to_device(b, accelerator.device) for b in loader)


def _index_stream(dataset: Any, config: Any, accelerator: Any) -> BatchIndexStream:
    return BatchIndexStream(
        len(dataset),
        config.train_batch_size,
        config.seed,
        accelerator.process_index,
        accelerator.num_processes,
    )


def first_batch_indices(dataset: Any, config: Any, accelerator: Any, start_micro: int) -> list[int] | None:
    """This process's first micro-batch of a map-style dataset (None for streams): shard checks."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return None
    return _index_stream(dataset, config, accelerator).indices(start_micro)


def stream_batches(
    dataset: Any, task: TrainingTask, config: Any, accelerator: Any, start_micro: int
) -> Iterator[dict[str, Any]]:
    """Batches from a streaming dataset (corpora that do not fit on disk or in memory).

    Epochs repeat the stream; process ``r`` of ``w`` takes every ``w``-th batch. On resume the batches
    already seen are read and skipped, so the data order continues where it stopped.
    """
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.train_batch_size,
        collate_fn=task.collate,
        num_workers=config.dataloader_num_workers,
        drop_last=True,
        pin_memory=accelerator.device.type == "cuda",
    )
    k, seen = 0, 0
    while True:
        produced = False
        for batch in loader:
            produced = True
            mine = k % accelerator.num_processes == accelerator.process_index
            k += 1
            if not mine:
                continue
            seen += 1
            if seen <= start_micro:
                continue
            yield to_device(batch, accelerator.device)
        if not produced:
            raise ValueError(
                "the streaming dataset yielded no full batch; lower train_batch_size or check the data"
            )


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }
