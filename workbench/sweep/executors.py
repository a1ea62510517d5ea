"""Where sweep cells run: in this process (``local``) or on Ray actors (``ray``), behind one interface.

``Sweep.run`` reads finished cells back from the cache itself and hands the others to an executor,
whose ``run(sweep, cells, options)`` yields ``(cell, CellOutput)`` as each finishes; the sweep stores
every output in the same cache, grid and table, whatever ran it. Both executors run cells with the one
``workbench.sweep.runner.CellRunner``, so the cell logic exists once.

Ray (``executor=ray``): one actor per GPU (or per CPU slot), each with its own resident ``CellRunner``
(models built once per actor by ``Workbench.from_config`` / ``cached_components`` and kept across cells
and across sweeps of the session), never one process per cell reloading the weights. Cells are dealt
out by (model, precision, device) group so that an actor keeps its weights; an idle actor takes a
group nobody holds, or helps with one that has many cells left. Only ``CellOutput`` (images + record) travels back, so the worker
nodes need the package and the model files, not the driver's disk. Inside an actor, ``device=auto`` /
``cuda`` is the GPU Ray gave it.
"""

from __future__ import annotations

from workbench.errors import RunFailure
import os
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Optional, Protocol

from workbench.config.schema import ExecutorConfig, ExecutorName
from workbench.sweep.plan import model_group_key
from workbench.sweep.runner import CellOutput, CellRunner

if TYPE_CHECKING:
    from workbench.sweep.plan import Cell, Sweep

__all__ = ["Executor", "ExecutorError", "LocalExecutor", "RayExecutor", "RunOptions", "make_executor", "shutdown"]

INSTALL_HINT = "pip install qwen-image-workbench[ray]"


class ExecutorError(RunFailure):
    """The executor cannot run the sweep (Ray missing, a cluster too small); the message says the fix."""


@dataclass
class RunOptions:
    keep_models: bool = True  # False: free the resident models when a runner moves to another model group
    conditioning_cache_size: int = 16


class Executor(Protocol):
    name: str

    def run(self, sweep: "Sweep", cells: list["Cell"], options: RunOptions) -> Iterator[tuple["Cell", CellOutput]]:
        """Run ``cells`` (valid, not cached, in execution order); yield each with its output as it finishes.

        Closing the generator early (a stopped sweep) must drop the cells not started yet.
        """
        ...


def make_executor(spec: Any = None) -> Executor:
    """An executor from None (local), ``"local"`` / ``"ray"``, an ``ExecutorConfig`` or an executor object."""
    if spec is None:
        return LocalExecutor()
    if hasattr(spec, "run") and not isinstance(spec, (str, ExecutorConfig)):
        return spec
    if isinstance(spec, str):
        try:
            spec = ExecutorConfig(name=ExecutorName(spec))
        except ValueError:
            names = ", ".join(repr(n.value) for n in ExecutorName)
            raise ExecutorError(f"unknown executor {spec!r}; use one of {names}") from None
    if not isinstance(spec, ExecutorConfig):
        raise ExecutorError(f"executor must be 'local', 'ray', an ExecutorConfig or an executor object, got {spec!r}")
    return RayExecutor(spec) if ExecutorName(spec.name) == ExecutorName.ray else LocalExecutor()


# ----------------------------------------------------------------------------- local
class LocalExecutor:
    """Cells one after another in this process, on the models it keeps resident (the default)."""

    name = "local"

    def run(self, sweep: "Sweep", cells: list["Cell"], options: RunOptions) -> Iterator[tuple["Cell", CellOutput]]:
        runner = CellRunner(options.keep_models, options.conditioning_cache_size)
        for cell in cells:
            yield cell, runner.run(sweep, cell)


# ----------------------------------------------------------------------------- ray
def _import_ray():
    try:
        import ray
    except ImportError as err:
        raise ExecutorError(f"executor=ray needs Ray, which is not installed ({err}); {INSTALL_HINT}") from None
    return ray


class _SweepActor:
    """One per GPU / CPU slot: a ``CellRunner`` whose models stay resident across cells and sweeps."""

    def __init__(self):
        self.runner = CellRunner()

    def run(self, sweep: "Sweep", cell: "Cell", options: RunOptions) -> CellOutput:
        self.runner.keep_models = options.keep_models
        self.runner.cache_size = options.conditioning_cache_size
        return self.runner.run(sweep, cell)


@dataclass
class _Member:
    actor: Any  # Ray actor handle
    holds: Optional[str] = None  # model group of its last cell: what it keeps resident


_POOLS: dict[tuple, list[_Member]] = {}  # (Ray node, job, cpus, gpus) -> actors, reused by later sweeps


class RayExecutor:
    """Cells on Ray actors (see the module docstring); joins a running Ray or starts one from the config."""

    name = "ray"

    def __init__(self, config: ExecutorConfig = ExecutorConfig(name=ExecutorName.ray)):
        self.config = config
        self.ray = _import_ray()  # a missing Ray fails before any cell runs

    # ------------------------------------------------------------- cluster and actors
    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():  # a notebook or test that called ray.init itself
            return
        kwargs: dict[str, Any] = {"address": self.config.address, "ignore_reinit_error": True}
        if self.config.address is None:  # a private local cluster: no dashboard, no token files in ~/.ray
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            kwargs["include_dashboard"] = False
        ray.init(**kwargs)

    def _shape(self) -> tuple[int, float, float]:
        """(number of actors, CPUs and GPUs per actor), checked against what the cluster has."""
        total = self.ray.cluster_resources()
        cpu, gpu = total.get("CPU", 0.0), total.get("GPU", 0.0)
        c = self.config
        gpus = c.gpus_per_actor if c.gpus_per_actor is not None else (1.0 if gpu >= 1 else 0.0)
        cpus = c.cpus_per_actor
        if c.num_actors is not None:
            n = c.num_actors
        elif gpus > 0:
            n = int(gpu // gpus)
        else:
            n = int(cpu // cpus)
        # an actor asking for more than the cluster has waits forever: say so now
        if gpus > 0 and n * gpus > gpu + 1e-9:
            raise ExecutorError(
                f"executor: {n} actor(s) x {gpus} GPU need {n * gpus:g} GPUs but the Ray cluster has {gpu:g}; "
                "lower executor.num_actors / executor.gpus_per_actor (0 runs on CPUs)"
            )
        if n < 1 or n * cpus > cpu + 1e-9:
            raise ExecutorError(
                f"executor: {max(n, 1)} actor(s) x {cpus:g} CPU need {max(n, 1) * cpus:g} CPUs but the Ray cluster "
                f"has {cpu:g}; lower executor.num_actors / executor.cpus_per_actor"
            )
        return n, cpus, gpus

    def actors(self, wanted: int) -> list[_Member]:
        """The actors of earlier sweeps (they hold models) plus new ones up to ``wanted``, at most the configured number."""
        self._connect()
        n, cpus, gpus = self._shape()
        context = self.ray.get_runtime_context()  # a new cluster has new ids: stale handles are not reused
        key = (context.get_node_id(), context.get_job_id(), cpus, gpus)
        pool = _POOLS.setdefault(key, [])
        remote = self.ray.remote(max_restarts=1)(_SweepActor).options(num_cpus=cpus, num_gpus=gpus)
        while len(pool) < min(n, wanted):
            pool.append(_Member(remote.remote()))
        return pool[:n]

    # ------------------------------------------------------------- scheduling
    def run(self, sweep: "Sweep", cells: list["Cell"], options: RunOptions) -> Iterator[tuple["Cell", CellOutput]]:
        ray = self.ray
        actors = self.actors(len(cells))
        groups: "OrderedDict[str, deque]" = OrderedDict()  # model group -> its cells, in execution order
        for cell in cells:
            groups.setdefault(model_group_key(cell.resolved), deque()).append(cell)
        sweep_ref = ray.put(sweep)  # shipped once, not with every cell
        running: dict = {}  # ObjectRef -> (actor index, cell)

        def submit(i: int) -> None:
            """Give actor ``i`` its next cell: from the group it holds; when that is done, a group nobody
            holds; else it helps the busiest group, when it holds no model yet or when that group has more
            than two pending cells per actor on it (switching models costs a few cells); else it idles."""
            me = actors[i]
            pending = [k for k, q in groups.items() if q]
            if me.holds not in pending:
                on = {k: sum(a.holds == k for a in actors) for k in pending}
                free = [k for k in pending if on[k] == 0]
                busy = [k for k in pending if on[k] and (me.holds is None or len(groups[k]) > 2 * on[k])]
                choice = free or sorted(busy, key=lambda k: -len(groups[k]) / on[k])
                if not choice:
                    return
                me.holds = choice[0]
            cell = groups[me.holds].popleft()
            running[me.actor.run.remote(sweep_ref, cell, options)] = (i, cell)

        try:
            for i in range(len(actors)):
                submit(i)
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                i, cell = running.pop(ready[0])
                try:
                    out = ray.get(ready[0])
                except ray.exceptions.RayError as err:  # the actor died (killed for memory, crashed)
                    message = f"{type(err).__name__}: the Ray actor running this cell failed: {str(err).splitlines()[0]}"
                    out = CellOutput.failure(cell, message)
                    actors[i].holds = None  # a restarted actor holds no models
                submit(i)  # keep the actor busy before the caller stores and draws this cell
                yield cell, out
        finally:
            for ref in running:  # a stopped sweep: drop what has not started (running cells finish unseen)
                ray.cancel(ref)


def shutdown() -> int:
    """Kill the sweep actors (frees their GPU memory; the next Ray sweep starts new ones); returns how many."""
    n = 0
    if _POOLS:
        ray = _import_ray()
        for pool in _POOLS.values():
            for member in pool:
                ray.kill(member.actor)
                n += 1
    _POOLS.clear()
    return n
