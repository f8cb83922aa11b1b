"""A train DataLoader that resumes mid-epoch exactly: the same samples, in the same order, with the same RNG draws.

Lightning restores a loader's position only through its ``state_dict``/``load_state_dict`` (a plain DataLoader
restarts the epoch from its first batch). The state here is the epoch's index batches (so a shuffled order is
not drawn again), how many batches were fetched and trained, and the global RNG state at the save: the resumed
iterator puts it back at its first fetch (creating the iterator drew a worker seed the uninterrupted run did not
draw mid-epoch). Where a prefetcher had loaded a batch that was not trained yet (loaders of unknown length), that
batch is loaded again with the RNG it was first loaded with, and the stream continues from the save after it.
Exact with ``dataset.segment.workers=0``; with workers the samples and their order are exact, while augmentation
draws in the new workers differ.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import BatchSampler, DataLoader, Sampler

from segformer_tao.engine.module import capture_rng, restore_rng


class EpochBatches(Sampler[list[int]]):
    """A batch sampler that remembers the index batches of the current epoch and where the loop is in them."""

    def __init__(self, inner: BatchSampler):
        self.inner = inner
        self.batches: list[list[int]] | None = None
        self.fetched = 0  # batches handed to the loader this epoch (one ahead of training: Lightning prefetches)
        self.trained = 0  # batches the training loop took this epoch (set by :func:`mark_trained`)
        self.rng_before_last: dict | None = None  # RNG states just before the last fetched batch was loaded
        self._resume: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:  # Lightning calls it each epoch; a DistributedSampler needs it
        if callable(getattr(self.inner.sampler, "set_epoch", None)):
            self.inner.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        resume, self._resume = self._resume, None
        self.batches, self.fetched, self.trained = None, 0, 0
        restore_after = None
        if resume is not None:  # this body runs at the first fetch, after the new iterator drew its worker seed
            self.batches, self.fetched = resume["batches"], resume["trained"]
            self.trained = resume["trained"]
            if resume["fetched"] > resume["trained"] and resume.get("rng_before_last") is not None:
                restore_rng(resume["rng_before_last"])  # re-load the prefetched batch as it was loaded first
                restore_after = resume["rng_at_save"]
            else:  # no batch was pending: continue the stream exactly where the checkpoint left it
                restore_rng(resume["rng_at_save"])
        while True:
            if self.batches is None:  # at the first fetch, when a RandomSampler draws its seed
                self.batches = [list(b) for b in self.inner]
            if self.fetched >= len(self.batches):
                return
            self.rng_before_last = capture_rng()
            self.fetched += 1
            yield self.batches[self.fetched - 1]
            if restore_after is not None:  # the next load draws what it drew in the uninterrupted run
                restore_rng(restore_after)
                restore_after = None

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "fetched": self.fetched, "trained": self.trained,
                "rng_before_last": self.rng_before_last, "rng_at_save": capture_rng()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("batches") is not None and 0 < state["trained"] < len(state["batches"]):
            self._resume = state


class ResumableDataLoader(DataLoader):
    """``DataLoader(dataset, batch_size, sampler, ...)`` whose position Lightning saves and restores (mid-epoch)."""

    def __init__(self, dataset, *, batch_size: int, sampler: Sampler, drop_last: bool = False, **kwargs: Any):
        super().__init__(dataset, batch_sampler=EpochBatches(BatchSampler(sampler, batch_size, drop_last)), **kwargs)

    def state_dict(self) -> dict[str, Any]:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batch_sampler.load_state_dict(state)


def resumable(loader: DataLoader) -> ResumableDataLoader:
    """The same loader (dataset, batch size, sampler, workers, seeding, collation), resumable mid-epoch."""
    return ResumableDataLoader(loader.dataset, batch_size=loader.batch_size, sampler=loader.sampler,
                               drop_last=loader.drop_last, num_workers=loader.num_workers,
                               persistent_workers=loader.persistent_workers, pin_memory=loader.pin_memory,
                               worker_init_fn=loader.worker_init_fn, collate_fn=loader.collate_fn,
                               generator=loader.generator)


def _loader(trainer) -> ResumableDataLoader | None:
    loader = getattr(trainer, "train_dataloader", None)
    return loader if isinstance(loader, ResumableDataLoader) else None


def mark_trained(trainer, batch_idx: int) -> None:
    """Tell the train loader that batch ``batch_idx`` of this epoch is being trained (call at batch start)."""
    loader = _loader(trainer)
    if loader is not None:
        loader.batch_sampler.trained = batch_idx + 1


def loader_state(trainer) -> dict[str, Any] | None:
    """The train loader's position, to store in a checkpoint (None for another kind of loader)."""
    loader = _loader(trainer)
    return None if loader is None else loader.state_dict()


def restore_loader(trainer, state: dict[str, Any] | None) -> None:
    """Put a checkpoint's loader position back before the first batch is fetched. Lightning's own path loads it only
    into a loader built after the checkpoint is restored, while ours is built earlier (estimated_stepping_batches
    builds it for the LR schedule), so the resume does it here."""
    loader = _loader(trainer)
    if loader is not None and state:
        loader.load_state_dict(state)
