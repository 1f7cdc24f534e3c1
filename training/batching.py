"""Length batching for the scripts that train on texts: batches of similar lengths, so little
compute goes to padding, drawn afresh each epoch from one seeded generator and sharded by rank."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def epoch_batches(lengths: list[int], batch_size: int, seed: int, rank: int, world: int,
                  start_epoch: int) -> Iterator[list[list[int]]]:
    """Each epoch's length_batches from one seeded generator. A resumed run replays the draws of
    its finished epochs, so it sees the batches an uninterrupted run would have."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(start_epoch):
        length_batches(lengths, batch_size, generator, rank, world)
    while True:
        yield length_batches(lengths, batch_size, generator, rank, world)


def length_batches(lengths: list[int], batch_size: int, generator: torch.Generator | None,
                   rank: int = 0, world: int = 1, pool: int = 50) -> list[list[int]]:
    """Index batches of similar lengths, so little compute goes to padding.

    Shuffle (when a generator is given), sort within pools of `pool` batches by length, cut
    batches, shuffle their order, then give each rank every world-th batch (DDP sharding).
    """
    count = len(lengths)
    order = torch.randperm(count, generator=generator).tolist() if generator else list(range(count))
    batches = []
    for start in range(0, count, batch_size * pool):
        chunk = sorted(order[start:start + batch_size * pool], key=lengths.__getitem__)
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    if generator is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    if world > 1:  # equal counts per rank, or DDP's all-reduce would wait forever
        batches = batches[: len(batches) // world * world][rank::world]
    return batches
