"""The ``executor`` group (conf/executor/): where sweep cells run."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

from workbench.config import limits
from workbench.errors import ConfigError


class ExecutorName(str, Enum):
    local = "local"  # sweep cells run in this process, on its resident models
    ray = "ray"  # on Ray actors, one per GPU (or CPU slot), each holding resident models


@dataclass
class ExecutorConfig:
    """Where sweep cells run (workbench/sweep/executors.py). Not part of a cell's cache key: the same
    cell gives the same image on either executor, so each reuses the other's finished cells."""

    name: ExecutorName = ExecutorName.local
    address: Optional[str] = None  # ray: null = start a local cluster; "auto" = the running one; "ray://head:10001"
    num_actors: Optional[int] = None  # ray: null = one per GPU of the cluster (one per CPU slot without GPUs)
    gpus_per_actor: Optional[float] = None  # ray: null = 1 where the cluster has GPUs, else 0
    cpus_per_actor: float = 1.0  # ray

    def __post_init__(self) -> None:
        limits.check_finite_fields(self, "executor.", {
            "gpus_per_actor": "a number >= 0 (0 = CPU actors), or null", "cpus_per_actor": "a number > 0"}, ConfigError)
        if self.num_actors is not None and self.num_actors < 1:
            raise ConfigError(f"executor.num_actors must be >= 1 (or null: one per GPU), got {self.num_actors}")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise ConfigError(f"executor.gpus_per_actor must be >= 0 (0 = CPU actors), got {self.gpus_per_actor}")
        if self.cpus_per_actor <= 0:
            raise ConfigError(f"executor.cpus_per_actor must be > 0, got {self.cpus_per_actor}")
