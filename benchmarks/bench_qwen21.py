"""GPU benchmark, issue 17: the full-size Qwen-Image-2.1 transformer (random weights) through the workbench's
stages and through stock diffusers ``QwenImage21Pipeline``, on the same resident modules in the same process.

Real sizes from the classes' defaults / Qwen3-VL-8B's config (7 B single-stream DiT, 8 B Qwen3-VL encoder, RGBA
VAE), random weights drawn on the GPU in bf16. Cases: text-to-image at 1024^2 and 2048^2 (2.1 is native 2K), and
one condition image at 1024^2, each with the prefix KV cache on and off (``perf.prefix_kv_cache``; diffusers'
``use_kv_cache``), 8 steps, cfg 1. Per case and side: encode + denoise seconds (decode excluded, measured once),
the transformer's first (prefill) and later (cached) forward, peak memory, and the max difference between the two
sides' final latents. Random weights cannot show image quality; speed does not depend on them.

Usage (GPU machine):  python benchmarks/bench_qwen21.py --out $OUT/qwen21.json
CPU check of the script on the tiny 2.1 model:  python benchmarks/bench_qwen21.py --tiny --out /tmp/q21.json
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_gpu import Results, sync  # noqa: E402

PROMPT = "a red fox in the snow, photographed at dusk, the text 'QWEN 2.1' painted on a wooden sign"
CASES = {  # name: (side, condition images)
    "t2i_1024": (1024, 0),
    "t2i_2048": (2048, 0),
    "ref1_1024": (1024, 1),
}


def full_size_components(device: torch.device):
    """Random full-size 2.1 components on ``device`` in bf16 (weights drawn there: seconds, not minutes)."""
    from diffusers import AutoencoderKLQwenImage21, QwenImage21Transformer2DModel
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from workbench.models import arch21
    from workbench.models.components import Components
    from workbench.models.tiny import init_on
    from workbench.tokenizer import load_qwen3_tokenizer

    encoder = Qwen3VLConfig(  # Qwen3-VL-8B-Instruct's sizes
        text_config=dict(vocab_size=arch21.VOCAB_SIZE, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
                         max_position_embeddings=262144, rope_parameters=arch21.rope_parameters([24, 20, 20])),
        vision_config=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                           deepstack_visual_indexes=[8, 16, 24], num_position_embeddings=2304),
        **arch21.vision_token_ids())
    torch.manual_seed(0)
    with init_on(device, torch.bfloat16):
        text_encoder = Qwen3VLForConditionalGeneration(encoder).eval()
        transformer = QwenImage21Transformer2DModel().eval()  # the diffusers defaults are 2.1's config
        vae = AutoencoderKLQwenImage21().eval()
    for m in (text_encoder, transformer, vae):
        m.requires_grad_(False)
    ids = {k: f"random_full_qwen21:{k}" for k in ("text_encoder", "transformer", "vae")}
    return Components(load_qwen3_tokenizer(), text_encoder, transformer, vae, device, ids | {"tokenizer": "qwen3"},
                      family="qwen-image-2.1")


class ForwardTimer:
    """CUDA-event time of every transformer forward (first = the prefill, the rest = cached decode)."""

    def __init__(self, transformer):
        self.times: list[float] = []
        self._start = None
        cuda = torch.cuda.is_available()
        self._pre = transformer.register_forward_pre_hook(lambda *a: self._begin(cuda))
        self._post = transformer.register_forward_hook(lambda *a: self._end(cuda))

    def _begin(self, cuda):
        if cuda:
            self._start = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self._start[0].record()
        else:
            self._start = time.perf_counter()

    def _end(self, cuda):
        if cuda:
            self._start[1].record()
            torch.cuda.synchronize()
            self.times.append(self._start[0].elapsed_time(self._start[1]) / 1000)
        else:
            self.times.append(time.perf_counter() - self._start)

    def take(self) -> dict:
        t, self.times = self.times, []
        return {"forwards": len(t), "first_s": round(t[0], 4), "later_mean_s": round(sum(t[1:]) / max(1, len(t) - 1), 4)}

    def remove(self):
        self._pre.remove()
        self._post.remove()


def peak_reset():
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float:
    return round(torch.cuda.max_memory_allocated() / 1e9, 2) if torch.cuda.is_available() else 0.0


def run_ours(bench, cfg, image, kv: bool) -> torch.Tensor:
    """encode + latents + denoise through the workbench's stages; the final latents."""
    bench.clear_conditioning_cache()  # a new prompt each time, as stock re-encodes
    refs = bench.prepare_references([image], cfg.reference) if image is not None else None
    h, w = (refs.vae_sizes[-1][1], refs.vae_sizes[-1][0]) if refs else (cfg.height, cfg.width)
    cond = bench.encode(cfg.prompts, cfg.template, refs.vlm_images if refs else [], tap=cfg.encoder_tap)
    latents = bench.prepare_latents(cfg.seeds, h, w)
    return bench.denoise(latents, cond, cfg.sampler, h, w, references=refs, progress=False, prefix_kv_cache=kv)


def run_stock(pipe, cfg, image, side: int, steps: int, kv: bool) -> torch.Tensor:
    """The same through diffusers' ``QwenImage21Pipeline``; its final latents."""
    return pipe(prompt=cfg.prompts[0], image=[image] if image is not None else None, height=cfg.height,
                width=cfg.width, output_resolution=side, num_inference_steps=steps,
                generator=torch.Generator("cpu").manual_seed(cfg.seeds[0]), output_type="latent",
                use_kv_cache=kv).images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="the tiny 2.1 model on the CPU (checks the script)")
    args = parser.parse_args()

    from diffusers import QwenImage21Pipeline
    from helpers.parity import qwen3_processor

    from workbench.config import compose, to_run_config
    from workbench.pipeline import Workbench, load_image
    from workbench.stages.schedule import make_scheduler

    device = torch.device("cpu" if args.tiny else "cuda")
    results = Results.open(args.out, steps=args.steps, repeats=args.repeats, tiny=args.tiny)
    t0 = time.perf_counter()
    if args.tiny:
        bench = Workbench.from_config(to_run_config(compose(["experiment=qwen21_t2i_tiny", "device=cpu"])))
    else:
        bench = Workbench(full_size_components(device))
    c = bench.components
    sync()
    results.put("build", {"seconds": round(time.perf_counter() - t0, 1), "peak_gb": peak_gb(),
                          "transformer_params_b": round(sum(p.numel() for p in c.transformer.parameters()) / 1e9, 2),
                          "text_encoder_params_b": round(sum(p.numel() for p in c.text_encoder.parameters()) / 1e9, 2)})
    timer = ForwardTimer(c.transformer)
    image = load_image("asset:sample_reference.png")
    for name in args.cases.split(","):
        side, refs = CASES[name]
        side = 128 if args.tiny else side
        for kv in (True, False):
            overrides = ["experiment=qwen21_t2i_tiny", f"device={device.type}", f"sampler.steps={args.steps}",
                         "sampler.cfg=1.0", f"prompts=[{PROMPT!r}]", f"perf.prefix_kv_cache={str(kv).lower()}"]
            overrides += ([f"images=[{'asset:sample_reference.png'}]", "height=null", "width=null",
                           f"reference.vae_area={side * side}"] if refs else [f"height={side}", f"width={side}"])
            cfg = to_run_config(compose(overrides))
            sampler = cfg.sampler
            pipe = QwenImage21Pipeline(scheduler=make_scheduler(sampler), vae=c.vae, text_encoder=c.text_encoder,
                                       processor=qwen3_processor(c.tokenizer, min_pixels=1024 if args.tiny else 65536),
                                       transformer=c.transformer)
            pipe.set_progress_bar_config(disable=True)

            ours = functools.partial(run_ours, bench, cfg, image if refs else None, kv)
            stock = functools.partial(run_stock, pipe, cfg, image if refs else None, side, args.steps, kv)

            row = {}
            out = {}
            for label, fn in (("workbench", ours), ("stock", stock)):
                with torch.no_grad():
                    fn()  # warm-up (kernel selection, allocator)
                    timer.take()
                    times = []
                    for _ in range(args.repeats):
                        peak_reset()
                        sync()
                        t = time.perf_counter()
                        out[label] = fn()
                        sync()
                        times.append(time.perf_counter() - t)
                    row[label] = {"encode_denoise_s": round(min(times), 3), "all_s": [round(x, 3) for x in times],
                                  "peak_gb": peak_gb(), **timer.take()}
            row["tokens"] = int(out["workbench"].shape[1])
            row["max_abs_latent_diff"] = float((out["workbench"].float() - out["stock"].float()).abs().max())
            row["speed_vs_stock"] = round(row["stock"]["encode_denoise_s"] / row["workbench"]["encode_denoise_s"], 3)
            results.put(f"{name}_kv_{'on' if kv else 'off'}", row)
        # decode once per size (same VAE call on both sides)
        with torch.no_grad():
            sync()
            t = time.perf_counter()
            h = w = side if not refs else None
            if h:
                bench.decode(out["workbench"], h, w)
                sync()
                results.put(f"{name}_decode", {"seconds": round(time.perf_counter() - t, 3), "peak_gb": peak_gb()})
    timer.remove()


if __name__ == "__main__":
    main()
