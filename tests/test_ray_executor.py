"""executor=ray: sweep cells on Ray actors give the local executor's images and fill the same cache.

One local Ray cluster on CPU (2 actors of 1 CPU) is started for the module; every actor builds the
tiny model once and keeps it for every cell it is dealt.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from workbench.sweep import FAILED, Sweep, SweepError
from workbench.sweep.executors import ExecutorError, LocalExecutor, RayExecutor, make_executor

SMALL = ["height=32", "width=32"]
RAY = ["executor=ray", "executor.num_actors=2", "executor.gpus_per_actor=0"]  # the executor comes from the config


@pytest.fixture(scope="module")
def ray_cluster():
    """The workbench's own private cluster (loopback only, token auth on), 2 CPUs."""
    ray = pytest.importorskip("ray", reason="executor=ray needs ray: pip install qwen-image-workbench[ray]")
    from workbench.sweep import executors as sweep_executors

    # a cluster address in the environment must not be joined: the workbench starts its own
    old, os.environ["RAY_ADDRESS"] = os.environ.get("RAY_ADDRESS"), "192.0.2.1:6379"
    try:
        for attempt in range(3):  # Ray's raylet gives its agents 15 s to start: a loaded CI machine can miss it
            try:
                address = sweep_executors.start_local_cluster(num_cpus=2)
                break
            except ExecutorError as err:
                if "timed out during startup" not in str(err) or attempt == 2:
                    raise
    finally:
        os.environ.pop("RAY_ADDRESS") if old is None else os.environ.__setitem__("RAY_ADDRESS", old)
    root = sweep_executors._LOCAL["root"]
    yield ray, address, root
    sweep_executors.stop_local_cluster()
    assert not root.exists() and "RAY_AUTH_TOKEN_PATH" not in os.environ  # the token goes with the cluster


def pixels(result) -> list[np.ndarray]:
    return [np.asarray(r.images[0]) for r in result.cells]


def test_ray_matches_local_and_shares_the_cache(ray_cluster, tmp_path):
    axes = ["precision=fp32,bf16", "sampler.steps=2,3"]
    on_ray = Sweep.plan(axes, base=SMALL + RAY, out_dir=tmp_path / "ray")
    local = Sweep.plan(axes, base=SMALL, out_dir=tmp_path / "local")
    assert [c.key for c in on_ray.cells] == [c.key for c in local.cells]  # executor settings are not in the key
    assert on_ray.executor.name.value == "ray" and local.executor.name.value == "local"

    r = on_ray.run(progress=False)
    assert r.stats["ran"] == 4 and r.stats["failed"] == 0
    # one actor per model group, each built its model once: no switches, one encode per group
    assert r.stats["model_switches"] == 0 and r.stats["encodes"] == 2
    workers = {res.worker for res in r.cells}
    assert len(workers) == 2 and not any(w.endswith(f":{os.getpid()}") for w in workers)
    by_precision = {res.worker: res.cell.values[0] for res in r.cells}
    for res in r.cells:  # a worker ran only cells of its own precision
        assert by_precision[res.worker] == res.cell.values[0]

    here = local.run(progress=False)
    assert here.stats["ran"] == 4 and all(res.worker.endswith(f":{os.getpid()}") for res in here.cells)
    for a, b in zip(pixels(r), pixels(here)):
        assert a.shape == (32, 32, 3) and np.array_equal(a, b)  # bit-equal pixels
    for a, b in zip(r.cells, here.cells):
        assert a.record["config"] == b.record["config"] and "executor" not in a.record["config"]
        assert a.files[0].name == b.files[0].name
    assert pixels(r)[0].tolist() != pixels(r)[2].tolist()  # different steps, different images

    # the same cache: either executor reads back the other's cells and runs nothing
    again = Sweep.plan(axes, base=SMALL, out_dir=tmp_path / "ray").run(progress=False)
    assert again.stats["cached"] == 4 and again.stats["ran"] == 0
    assert all(np.array_equal(a, b) for a, b in zip(pixels(again), pixels(r)))
    assert on_ray.run(progress=False, executor=None).stats["cached"] == 4
    assert local.run(progress=False, executor="ray").stats["cached"] == 4  # executor as an argument

    # a removed cell is the only one that runs again, on Ray, into the folder the local run made
    (local.cell_dir(local.cells[3]) / "record.json").unlink()
    resumed = Sweep.plan(axes, base=SMALL + RAY, out_dir=tmp_path / "local").run(progress=False)
    assert resumed.stats["cached"] == 3 and resumed.stats["ran"] == 1
    # ... on the actor that already holds that model and its conditioning from the first sweep
    assert resumed.cells[3].worker == r.cells[3].worker and resumed.stats["encodes"] == 0
    assert np.array_equal(pixels(resumed)[3], pixels(here)[3])
    assert (tmp_path / "local" / "grid.png").is_file()


def test_ray_failing_cell_is_a_labelled_tile(ray_cluster, tmp_path):
    gone = tmp_path / "ref.png"  # checked when planned (config time), removed before the cell runs
    gone.write_bytes((Path(__file__).parents[1] / "workbench" / "assets" / "sample_reference.png").read_bytes())
    edit = Sweep.plan(
        [f"images=asset:sample_reference.png,{gone}"],
        base=["experiment=edit_tiny", "sampler.steps=2"] + RAY,
        out_dir=tmp_path / "sweep",
    )
    gone.unlink()
    result = edit.run(progress=False)
    assert list(result.table["status"]) == ["ok", "failed"]
    assert f"images[0] '{gone}': file not found" in result.cells[1].error
    error = json.loads((edit.cell_dir(edit.cells[1]) / "error.json").read_text())
    assert str(gone) in error["error"]
    grid = np.asarray(result.grid)
    tile_w = result.cells[0].images[0].width
    assert (grid == np.array(FAILED, dtype=grid.dtype)).all(axis=-1).sum() > tile_w * 10  # the blank tile is drawn


def test_ray_sweep_stops_when_the_callback_says_so(ray_cluster, tmp_path):
    sweep = Sweep.plan(["sampler.steps=2,3,4"], base=SMALL + RAY, out_dir=tmp_path)
    result = sweep.run(progress=False, on_cell=lambda res, all_results: True)  # stop after the first cell
    assert result.done == 1 and list(result.table["status"]).count("pending") == 2
    assert len(list(tmp_path.glob("cells/*/record.json"))) == 1  # cells finishing after the stop are not stored


def test_executor_settings_are_checked_and_never_swept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default sweep folders land here
    with pytest.raises(SweepError, match="'executor.num_actors' cannot be an axis"):
        Sweep.plan(["executor.num_actors=1,2"], base=SMALL)
    with pytest.raises(SweepError, match="executor.num_actors must be >= 1"):
        Sweep.plan(["sampler.steps=2"], base=SMALL + ["executor=ray", "executor.num_actors=0"])
    # the default sweep folder does not depend on the executor: a Ray run finds a local run's cache
    a = Sweep.plan(["sampler.steps=2,3"], base=SMALL)
    b = Sweep.plan(["sampler.steps=2,3"], base=SMALL + RAY)
    assert a.out_dir == b.out_dir and b.executor.num_actors == 2
    assert isinstance(make_executor(a.executor), LocalExecutor) and isinstance(make_executor("local"), LocalExecutor)
    with pytest.raises(ExecutorError, match="unknown executor 'dask'; use one of 'local', 'ray'"):
        make_executor("dask")

    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # Ray not installed
    with pytest.raises(ExecutorError, match=r"needs Ray.*pip install qwen-image-workbench\[ray\]"):
        b.run(progress=False)
    assert not (tmp_path / "outputs").exists()  # nothing ran


def test_ray_cluster_too_small_is_refused(ray_cluster):
    from workbench.config import ExecutorConfig, ExecutorName

    with pytest.raises(ExecutorError, match="need 3 CPUs but the Ray cluster has 2"):
        RayExecutor(ExecutorConfig(name=ExecutorName.ray, num_actors=3, gpus_per_actor=0)).actors(3)
    with pytest.raises(ExecutorError, match="need 1 GPUs but the Ray cluster has 0.*gpus_per_actor \\(0 runs on CPUs\\)"):
        RayExecutor(ExecutorConfig(name=ExecutorName.ray, num_actors=1, gpus_per_actor=1)).actors(1)


# ----------------------------------------------------------------------------- security (issue 12)
def _ray_listening(ray_pids: set[int]) -> list[tuple[str, int, str]]:
    import psutil

    out = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in ray_pids:
            out.append((conn.laddr.ip, conn.laddr.port, psutil.Process(conn.pid).name()))
    return out


def test_local_cluster_listens_on_loopback_only(ray_cluster):
    import ipaddress

    import psutil

    _, address, root = ray_cluster
    me = psutil.Process()
    pids = {me.pid} | {p.pid for p in me.children(recursive=True)}  # GCS, raylet, agents, workers
    listening = _ray_listening(pids)
    names = {name for _, _, name in listening}
    assert {"gcs_server", "raylet"} <= names, listening  # the servers were found
    assert int(address.rsplit(":", 1)[1]) in {port for _, port, _ in listening}
    for ip, port, name in listening:
        addr = ipaddress.ip_address(ip)
        loopback = addr.is_loopback or bool(getattr(addr, "ipv4_mapped", None) and addr.ipv4_mapped.is_loopback)
        assert loopback, f"{name} listens on {ip}:{port}"
    # the token: Ray's token auth is on, with a token the workbench keeps private
    token = root / "auth_token"
    assert os.environ["RAY_AUTH_MODE"] == "token" and os.environ["RAY_AUTH_TOKEN_PATH"] == str(token)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and stat.S_IMODE(root.stat().st_mode) == 0o700
    assert len(token.read_text()) == 64


CLIENT = """
import sys, ray
try:
    ray.init(address=sys.argv[1], log_to_driver=False)
    # num_cpus=0: the sweep actors of the earlier tests hold every CPU of the cluster
    run_id = ray.remote(num_cpus=0)(lambda: __import__("subprocess").run(["id", "-u"], capture_output=True, text=True).stdout)
    print("RAN", ray.get(run_id.remote(), timeout=120).strip())
except Exception as err:
    print("REFUSED", type(err).__name__, str(err).splitlines()[0][:300])
"""


def test_a_client_without_the_token_is_refused(ray_cluster, tmp_path):
    """The attack of issue 12 (a second process joins and runs `id`) fails without the token, works with it."""
    _, address, root = ray_cluster
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # an empty home (no ~/.ray/auth_token); loopback addresses kept as given, so the client reaches the GCS
    env.update(HOME=str(tmp_path), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")

    def client(**extra) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", CLIENT, address], env={**env, **extra},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    refused = "Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect"
    # the three clients at once (each mostly waits on Ray's connection attempts): no token, a wrong one, the token
    procs = [client(), client(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64),
             client(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(root / "auth_token"))]
    results = [(out.strip(), err) for out, err in (p.communicate(timeout=300) for p in procs)]
    for out, err in results[:2]:
        assert out.startswith("REFUSED ConnectionError") and refused in err, (out, err[-2000:])
    out, err = results[2]
    assert out == f"RAN {os.getuid()}", (out, err[-2000:])  # the same client with the token gets in


def test_joining_a_remote_cluster_needs_its_address_and_says_what_it_exposes(monkeypatch, capsys):
    from workbench.config import ExecutorConfig, ExecutorName
    from workbench.sweep import executors as sweep_executors

    calls = []

    class FakeRay:  # records what the executor asks of Ray; no cluster is reached
        def is_initialized(self):
            return bool(calls)

        def init(self, **kwargs):
            calls.append(kwargs)

    monkeypatch.setattr(sweep_executors, "_ANNOUNCED", set())
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    executor = RayExecutor(ExecutorConfig(name=ExecutorName.ray, address="ray://head:10001"))
    executor.ray = FakeRay()
    executor._connect()
    executor._connect()  # connected: nothing more is said
    assert calls == [{"address": "ray://head:10001", "ignore_reinit_error": True}]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("executor.address='ray://head:10001': joining an existing Ray cluster.")
    assert "anyone who can reach that cluster's ports can run code on its nodes unless it uses Ray token authentication" in err
    assert "RAY_AUTH_MODE=token is not set here, so this connection sends no token" in err
    assert "RAY_AUTH_MODE" not in os.environ  # never switched off (or on) behind the user's back


def test_ray_stop_takes_effect_between_cells(ray_cluster, tmp_path):
    """The control stays in the driver: a stop hands out no new cell and discards the cells in flight."""
    from workbench.sweep import SweepControl

    sweep = Sweep.plan(["sampler.steps=2,3,4,5"], base=SMALL + RAY, out_dir=tmp_path)
    seen = []

    def watch(p):
        seen.append(p)
        if p.phase == "done" and p.cells_done == 1:
            control.stop()

    control = SweepControl(on_progress=watch)
    result = sweep.run(progress=False, control=control)
    assert result.stopped and result.cut is None and result.stats["ran"] == 1 and result.done == 1
    assert all(p.step == 0 and p.steps == 0 for p in seen)  # per cell only: steps do not cross into actors
    assert [p.phase for p in seen] == ["done", "stopped"] and seen[0].eta_s > 0
    stored = [c for c in sweep.cells if (sweep.cell_dir(c) / "record.json").is_file()]
    assert [c.index for c in stored] == [i for i, r in enumerate(result.cells) if r is not None]
    assert list(result.table["status"]).count("pending") == 3

    resumed = Sweep.plan(["sampler.steps=2,3,4,5"], base=SMALL, out_dir=tmp_path).run(progress=False)
    assert resumed.stats["cached"] == 1 and resumed.stats["ran"] == 3
