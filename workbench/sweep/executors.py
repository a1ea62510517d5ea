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

Stopping (``Sweep.run(control=...)``, ``workbench.sweep.control``): the local executor hands the sweep's
``RunWatch`` to its runner, so a stop cuts the running cell after its current denoise step and progress
comes per step. The watch cannot cross into Ray actors (it is dropped when ``RunOptions`` is pickled):
there a stop takes effect between cells (no new cell is handed out; the cells in flight are cancelled
or, when already running, finish unseen and count as not run) and progress comes per cell.

Security: a Ray cluster runs whatever code a client sends it. The cluster the workbench starts itself
(``executor.address: null``) is private to this machine: every Ray server (GCS, raylet, object manager,
workers, agents) listens on 127.0.0.1 only, the dashboard is off, and Ray's token authentication is on
with a fresh random token kept in a 0700 temporary folder (file 0600), removed at exit. Joining another
cluster needs the user's explicit ``executor.address`` and says once what that exposes.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import secrets
import shutil
import sys
import tempfile
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Protocol

from workbench.config import ExecutorConfig, ExecutorName
from workbench.errors import RunFailure
from workbench.sweep.keys import model_group_key
from workbench.sweep.runner import CellOutput, CellRunner

if TYPE_CHECKING:
    from workbench.sweep.control import RunWatch
    from workbench.sweep.plan import Cell, SweepPlan

__all__ = ["Executor", "ExecutorError", "LocalExecutor", "RayExecutor", "RunOptions", "make_executor", "shutdown",
           "start_local_cluster", "stop_local_cluster"]

INSTALL_HINT = "pip install qwen-image-workbench[ray]"


class ExecutorError(RunFailure):
    """The executor cannot run the sweep (Ray missing, a cluster too small); the message says the fix."""


@dataclass
class RunOptions:
    keep_models: bool = True  # False: free the resident models when a runner moves to another model group
    conditioning_cache_size: int = 16
    # the sweep's progress and stop flag; this process only: never pickled (a Ray actor gets None)
    watch: Optional["RunWatch"] = field(default=None, compare=False, repr=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "watch": None}

    @property
    def stopped(self) -> bool:
        return self.watch is not None and self.watch.stopped


class Executor(Protocol):
    name: str

    def run(self, sweep: "SweepPlan", cells: list["Cell"], options: RunOptions) -> Iterator[tuple["Cell", CellOutput]]:
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

    def run(self, sweep: "SweepPlan", cells: list["Cell"], options: RunOptions) -> Iterator[tuple["Cell", CellOutput]]:
        runner = CellRunner(options.keep_models, options.conditioning_cache_size)
        for cell in cells:
            if options.stopped:  # stopped between cells: the rest is not started
                return
            yield cell, runner.run(sweep, cell, options.watch)


# ----------------------------------------------------------------------------- ray
def _import_ray():
    try:
        import ray
    except ImportError as err:
        raise ExecutorError(f"executor=ray needs Ray, which is not installed ({err}); {INSTALL_HINT}") from None
    return ray


_LOCAL: dict[str, Any] = {}  # the cluster start_local_cluster started: {"root": Path, "env": saved env}
_ANNOUNCED: set[str] = set()  # remote addresses already announced in this process
_AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")


def _announce_remote(address: str) -> None:
    """Say once, on stderr, what joining the cluster at ``address`` exposes (the user asked for it by name)."""
    if address in _ANNOUNCED:
        return
    _ANNOUNCED.add(address)
    auth = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    print(
        f"executor.address={address!r}: joining an existing Ray cluster. Its nodes run this sweep's cells and "
        "receive its configs, prompts and images; this process opens a Ray port that the cluster connects back "
        "to; anyone who can reach that cluster's ports can run code on its nodes unless it uses Ray token "
        "authentication (RAY_AUTH_MODE=token with the cluster's token in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)"
        + ("." if auth else "; RAY_AUTH_MODE=token is not set here, so this connection sends no token."),
        file=sys.stderr,
    )


def _is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host == "localhost"
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def start_local_cluster(num_cpus: Optional[int] = None, num_gpus: Optional[int] = None) -> str:
    """Start the workbench's private Ray cluster on this machine; returns its GCS address (``127.0.0.1:port``).

    Loopback only: Ray binds its servers to 127.0.0.1 when its node address is the loopback one, which
    it picks only where Ray clusters are switched off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, its own
    macOS / Windows default); that switch is set while ``ray.init`` starts the processes, which keep it.
    Token authentication is Ray's own (``RAY_AUTH_MODE=token``), with a new random token in a 0700
    folder (file 0600) instead of ``~/.ray/auth_token``. Both are checked after the start: a cluster
    that is not on loopback or not authenticated is stopped and refused, never used.
    """
    ray = _import_ray()
    from ray._private import ray_constants
    from ray._raylet import AuthenticationMode, AuthenticationTokenLoader, Config, get_authentication_mode

    if ray.is_initialized():
        raise ExecutorError("start_local_cluster: Ray is already initialized in this process; call ray.shutdown() first")
    # mode 0700: only this user can enter it. Under /tmp where there is one, as Ray's own default: its
    # Unix socket paths (in here) must stay under 108 bytes, which macOS's long $TMPDIR would break
    short = "/tmp" if os.name == "posix" and os.access("/tmp", os.W_OK) else None
    root = Path(tempfile.mkdtemp(prefix="workbench-ray-", dir=short))
    token = root / "auth_token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))  # 256 bits, as `ray get-auth-token --generate` makes
    saved = {k: os.environ.get(k) for k in (*_AUTH_ENV, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    _LOCAL.update(root=root, env=saved)
    os.environ["RAY_AUTH_MODE"] = "token"  # inherited by the GCS, raylet, agents and workers
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    cluster_flag = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False  # read by ray at import time: the running process needs it set too
    try:
        Config.initialize("")  # re-read RAY_AUTH_MODE in this process, as ray does when it enables auth itself
        AuthenticationTokenLoader.instance().reset_cache()  # a token cached from an earlier cluster is stale
        context = ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                           _node_ip_address="127.0.0.1", _temp_dir=str(root / "ray"), ignore_reinit_error=False)
    except Exception as err:  # Ray raises bare Exceptions (e.g. "timed out during startup" on a loaded machine)
        stop_local_cluster()
        first = (str(err).splitlines() or [""])[0]
        raise ExecutorError(f"could not start the local Ray cluster ({type(err).__name__}: {first}); "
                            "retry, or give executor.address of a running cluster") from err
    except BaseException:
        stop_local_cluster()
        raise
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_flag
        _restore_env({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": saved["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"]})
    info = context.address_info
    gcs = info.get("gcs_address", "")
    if not _is_loopback(info.get("node_ip_address", "")) or not _is_loopback(gcs.rsplit(":", 1)[0]):
        stop_local_cluster()
        raise ExecutorError(f"the local Ray cluster did not bind to loopback (node {info.get('node_ip_address')}, "
                            f"GCS {gcs}); refusing to run on it. Start Ray yourself and give executor.address")
    if get_authentication_mode() != AuthenticationMode.TOKEN:
        stop_local_cluster()
        raise ExecutorError("the local Ray cluster started without token authentication; refusing to run on it")
    return gcs


def _restore_env(saved: dict[str, Optional[str]]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def stop_local_cluster() -> None:
    """Stop the cluster ``start_local_cluster`` started (its actors too); remove its token and logs."""
    if not _LOCAL:
        return
    shutdown()
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    _restore_env(_LOCAL["env"])
    shutil.rmtree(_LOCAL["root"], ignore_errors=True)
    _LOCAL.clear()


atexit.register(stop_local_cluster)  # shuts Ray down (if its own atexit has not yet) before removing the folder


class _SweepActor:
    """One per GPU / CPU slot: a ``CellRunner`` whose models stay resident across cells and sweeps."""

    def __init__(self):
        self.runner = CellRunner()

    def run(self, sweep: "SweepPlan", cell: "Cell", options: RunOptions) -> CellOutput:
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

    def __init__(self, config: Optional[ExecutorConfig] = None):
        self.config = ExecutorConfig(name=ExecutorName.ray) if config is None else config
        self.ray = _import_ray()  # a missing Ray fails before any cell runs

    # ------------------------------------------------------------- cluster and actors
    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():  # a notebook or test that called ray.init (or start_local_cluster) itself
            return
        if self.config.address is None:  # the default: a private cluster on this machine
            start_local_cluster()
            return
        _announce_remote(self.config.address)
        ray.init(address=self.config.address, ignore_reinit_error=True)

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
    def run(self, sweep: "SweepPlan", cells: list["Cell"], options: RunOptions) -> Iterator[tuple["Cell", CellOutput]]:
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
            if options.stopped:  # a stopped sweep hands out no new cell
                return
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
                # with a watch, wake up now and then: a stop must not wait for the slowest cell in flight
                ready, _ = ray.wait(list(running), num_returns=1, timeout=None if options.watch is None else 0.2)
                if options.stopped:  # the cells in flight are cancelled below; their outputs are discarded
                    return
                if not ready:
                    continue
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
            for ref in running:  # a stopped sweep: drop what has not started (running cells finish unseen, not run)
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
