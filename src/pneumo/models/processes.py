"""Where this process stands in a (possibly one-process) job, as torchrun sets it, and the contiguous shard of a list
it handles. Torch-free and below training, so that `pneumo predict` under torchrun needs no training code; the
process group itself (`setup`, `teardown`, gradient averaging) lives in `pneumo.train.distributed`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from pneumo.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in a (possibly one-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


ONE_PROCESS = DistEnv()


def env_from_os() -> DistEnv:
    """The ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` that torchrun (or SLURM scripts) set; one process otherwise."""
    try:
        return DistEnv(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                       int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None


def is_main_process() -> bool:
    """True on rank 0 or when not launched by torchrun: the process that logs, writes and evaluates."""
    return env_from_os().is_main


def shard(items: Sequence[T], rank: int, world_size: int) -> Sequence[T]:
    """The contiguous part of ``items`` that ``rank`` handles: sizes differ by at most one, earlier ranks larger.

    Concatenating the shards of ranks 0..world_size-1 gives ``items`` back in order, so per-rank outputs (e.g.
    batch predictions of an archive) merge by simple concatenation.
    """
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside 0..{world_size - 1}")
    base, extra = divmod(len(items), world_size)
    start = rank * base + min(rank, extra)
    return items[start : start + base + (rank < extra)]
