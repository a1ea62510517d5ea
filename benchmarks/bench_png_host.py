"""Host-side costs of a sweep's writes, on any machine (CPU measurements behind the fifth pass, benchmarks/README.md):

1. deflate of a 3984x3984 photo-like grid's filtered rows, one core: zlib level 1 vs ISA-L level 1 (what
   ``png_encode`` uses for ``compress_level=1``), with the compressed size;
2. the GIL: one noise draw (``stages.latents.noise`` at 1328x1328, bf16) alone and beside a thread that encodes
   1328x1328 PNGs (what the sweep's writer did during the next cell's host phases before the fifth pass).

    python benchmarks/bench_png_host.py --out results/cpu_png_host.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from isal import isal_zlib
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.record.png_encode import _Filter, encode_png  # noqa: E402
from workbench.stages.latents import noise  # noqa: E402


def photo_like(side: int) -> Image.Image:
    """Smooth gradients plus noise: compresses like a generated image, not like flat colour or white noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side]
    arr = np.stack([(x * 0.05 + y * 0.03) % 256, (x * 0.02) % 256, (y * 0.04) % 256], -1) + rng.normal(0, 6, (side, side, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def deflate_times(image: Image.Image) -> dict:
    rows = np.asarray(image).reshape(image.height, -1)
    filt = _Filter(65, rows.shape[1], 3)
    data = b"".join(filt(rows[i:i + 65], rows[i - 1] if i else None).tobytes() for i in range(0, image.height, 65))
    out = {}
    for name, make in (("zlib_1", lambda: zlib.compressobj(1, zlib.DEFLATED, -15, 9, zlib.Z_FILTERED)),
                       ("isal_1", lambda: isal_zlib.compressobj(1, isal_zlib.DEFLATED, -15))):
        comp = make()
        t = time.perf_counter()
        size = len(comp.compress(data) + comp.flush())
        out[name] = {"s": round(time.perf_counter() - t, 4), "ratio": round(size / len(data), 4)}
    return out


def noise_draw_s(seconds: float = 0.5) -> float:
    """Mean seconds of one 1328x1328 bf16 noise draw, drawn repeatedly for ``seconds``."""
    t, n = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        noise([1], 166, 166, "cpu", torch.bfloat16)
        n += 1
    return (time.perf_counter() - t) / n


def noise_beside_writer(cell: Image.Image) -> dict:
    alone = noise_draw_s()
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            encode_png(cell, {"workbench": "x" * 2000}, 6, 1)

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(0.05)
    beside = noise_draw_s()
    stop.set()
    thread.join()
    return {"alone_ms": round(alone * 1e3, 2), "beside_png_writer_ms": round(beside * 1e3, 2)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    res = {"meta": {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "machine": platform.processor() or
                    platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "date": time.strftime("%Y-%m-%d %H:%M:%S")},
           "deflate_3984_grid_one_core": deflate_times(photo_like(3984)),
           "noise_draw_1328": noise_beside_writer(photo_like(1328))}
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
