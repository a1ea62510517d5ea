"""Running one cell where the models live (this process or a Ray actor); storing it is ``workbench.sweep.cache``.

Both executors run cells through this one ``CellRunner``, so the cell logic exists once, and get back
a picklable ``CellOutput``. Given a ``RunWatch`` (the local executor passes the sweep's), the runner reports
each denoise step (and, when asked, a decoded preview) and cuts the cell when the sweep is stopped: the
denoise loop raises ``Interrupted`` between steps and the cell comes back as ``status="cut"``, never stored.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from PIL import Image

from workbench.sweep.keys import model_group_key

if TYPE_CHECKING:
    from workbench.config import Config
    from workbench.pipeline import Workbench
    from workbench.sweep.control import RunWatch
    from workbench.sweep.plan import Cell, SweepPlan


@dataclass
class CellOutput:
    """What running one cell produced, before it is stored: picklable, so a Ray actor can send it back."""

    status: str  # ok | failed | cut (stopped mid-cell: nothing to store, runs again next time)
    images: list[Image.Image] = field(default_factory=list)
    record: dict = field(default_factory=dict)  # record.json (workbench.record.build): one "images" entry per image
    error: Optional[str] = None
    encodes: int = 0
    conditioning_hits: int = 0
    model_switch: bool = False  # this cell's (model, precision, device) differs from the runner's previous cell
    worker: Optional[str] = None  # "host:pid"
    latents: Optional[Any] = None  # numpy float32 (images, tokens, 64): final latents, for latent_rel_l2 vs a reference

    @classmethod
    def failure(cls, cell: Cell, message: str) -> "CellOutput":
        """A cell that raised (or whose worker died): the message becomes its blank tile's label."""
        return cls("failed", error=message, record={"config": cell.resolved, "error": message})


class CellRunner:
    """Runs cells where the models live (this process, or one Ray actor): a resident workbench per
    (model, precision, device), a conditioning LRU shared by its cells, and model switches.

    It writes nothing: ``store_output`` puts its outputs in the cache in the sweep's process, so a remote
    actor needs no shared disk and both executors fill the cache the same way.
    """

    def __init__(self, keep_models: bool = True, cache_size: int = 16):
        from workbench.conditioning_cache import ConditioningCache

        self.keep_models = keep_models
        self.cache_size = cache_size
        # the library's conditioning cache, shared by this runner's workbenches; its keys hold the encoder's
        # identity + dtype, so entries stay valid across model switches and a group that differs only in
        # the transformer (precision, LoRA, perf) reuses them
        self.conditioning = ConditioningCache(max_entries=cache_size)
        self.model: Optional[str] = None  # model_group_key of the last cell

    def run(self, sweep: SweepPlan, cell: Cell, watch: Optional[RunWatch] = None) -> CellOutput:
        """Run ``cell``; with a ``watch``, report its steps and cut it when the sweep is stopped."""
        from workbench.stages.denoise import Interrupted

        if watch is not None:
            watch.start(cell, "load")
        model = model_group_key(cell.resolved)
        switch = self.model is not None and model != self.model
        if switch and not self.keep_models:
            from workbench.models.build import free_models

            free_models()
        self.model = model
        try:
            out = self._generate(sweep, cell, watch)
        except Interrupted:  # the sweep was stopped: not a failure, the cell runs again next time
            _release_cuda()
            out = CellOutput("cut", record={"config": cell.resolved})
        except Exception as err:  # one bad cell (OOM, a combination the models refuse) must not end the sweep
            _release_cuda()
            message = f"{type(err).__name__}: {err}"
            out = CellOutput.failure(cell, message)
        out.model_switch = switch
        out.worker = f"{socket.gethostname()}:{os.getpid()}"
        return out

    def _generate(self, sweep: SweepPlan, cell: Cell, watch: Optional[RunWatch] = None) -> CellOutput:
        import torch

        from workbench import record as rec
        from workbench.pipeline import Workbench

        cfg = cell.config
        t: dict[str, float] = {}
        started = time.perf_counter()
        # resident: built once per (model, precision, device); encodes go through this runner's cache
        bench = Workbench.from_config(cfg, conditioning_cache=self.conditioning)
        t["load"] = time.perf_counter() - started
        self.conditioning.max_entries = self.cache_size  # executors may change it between sweeps
        if bench.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(bench.device)
        hits, misses = self.conditioning.hits, self.conditioning.misses
        callback = None if watch is None else _step_callback(watch, bench, cfg)
        generated = bench.generate(cfg, callback=callback, progress=False)  # the pipeline's own chain
        hits, misses = self.conditioning.hits - hits, self.conditioning.misses - misses
        hit = misses == 0

        shared = {k: generated[0].timings.get(k, 0.0) for k in ("references", "encode")}
        batches = {id(g.timings): g.timings for g in generated}.values()  # one dict per forward batch
        for stage in ("latents", "denoise", "decode"):
            t[stage] = sum(b.get(stage, 0.0) for b in batches)
        t.update(shared)
        t["total"] = time.perf_counter() - started

        head = rec.record_head(  # the run record (workbench.record.build) and where the cell sits in the sweep
            bench, cfg, cell.resolved,
            sweep={
                "base": sweep.base,
                "overrides": cell.overrides,
                "axes": {a.key: v for a, v in zip(sweep.axes, cell.values)},
                "pos": list(cell.pos),
            },
            timings_s={k: round(v, 6) for k, v in t.items()},
            conditioning_cached=hit,
        )
        record = rec.finish(head, [rec.image_entry(i, g, cfg, head) for i, g in enumerate(generated)])
        images = [g.image for g in generated]
        latents = torch.cat([g.latents for g in generated]).float().numpy()
        return CellOutput("ok", images, record, encodes=misses, conditioning_hits=hits, latents=latents)


def _step_callback(watch: RunWatch, bench: Workbench, cfg: Config) -> Callable:
    """The denoise loop's callback for one cell: counts its steps over all its forward batches, reports
    them (with a preview when due), says "decode" after a batch's last step; True (stop) once the sweep
    is stopped."""
    batches = -(-len(cfg.prompts) * len(cfg.seeds) // cfg.batch_size)
    state = {"done": 0, "per_batch": 0}

    def callback(info) -> bool:
        if not state["per_batch"]:  # image-to-image starts later in the schedule: the first step says where
            state["per_batch"] = cfg.sampler.steps - info.step
        state["done"] += 1
        total = state["per_batch"] * batches
        preview = _preview(bench, info) if watch.preview_due() else None
        watch.step(state["done"], total, preview)
        if state["done"] % state["per_batch"] == 0:  # this batch is denoised: its VAE decode comes next
            watch.phase("decode")
        return watch.stopped

    return callback


def _preview(bench: Workbench, info) -> Optional[Image.Image]:
    """The step's predicted clean image (first of the batch; Layered: its first frame, the whole image), decoded on
    a copy: the cell's result is untouched."""
    import torch

    if info.size is None:
        return None
    height, width = info.size
    with torch.inference_mode():
        return bench.decode_first(info.x0[:1].detach().clone(), height, width)


def _release_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
