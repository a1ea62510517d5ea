"""GPU benchmark: stock diffusers vs the workbench, side by side in ONE process, full-size shapes.

Builds the real 20 B ``QwenImageTransformer2DModel`` (and the real VAE) with random bf16 weights
directly on the GPU (speed does not depend on the values), then measures on identical inputs:

- DiT forward s/step at 1024 and 1328, cfg 1 (one forward) and true CFG (stock: two forwards;
  workbench: one batched forward), stock eager vs workbench variants (attention backend,
  regional compile, whole-model compile), with the max abs difference to the stock output;
- end to end 8-step cfg-1 and 20-step true-CFG images at 1328 (embeds given): stock
  ``QwenImagePipeline.__call__`` vs the workbench's denoise + decode, and the max latent difference;
- VAE decode, peak memory.

Usage (on the GPU machine):  python benchmarks/bench_gpu.py --out $OUT/bench.json [--variants ...]
Results are written after every measurement, so a run cut short still leaves its numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEXT_TOKENS = 128  # a typical prompt after the template drop


def cuda_time(fn, warmup: int = 2, repeat: int = 5) -> dict:
    """Median / min wall time of ``fn`` with device sync (seconds)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": len(times)}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Results:
    """Results JSON written after every measurement (a run cut short keeps what it measured)."""

    def __init__(self, path: Path, meta: dict):
        self.path, self.data = path, {"meta": meta, "results": {}}

    @classmethod
    def open(cls, out: str, **extra) -> "Results":
        """With the meta every results file carries: command, device, versions, date (+ ``extra``)."""
        import diffusers
        import transformers

        return cls(Path(out), {
            "command": " ".join(sys.argv),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), **extra,
        })

    def put(self, key: str, value) -> None:
        self.data["results"][key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.path)
        print(f"[{time.strftime('%H:%M:%S')}] {key}: {json.dumps(value)[:300]}", flush=True)


def build_transformer():
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(0)
    with torch.device("cuda"):
        prev = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            model = QwenImageTransformer2DModel()  # the diffusers defaults ARE the 20 B config
        finally:
            torch.set_default_dtype(prev)
    return model.eval().requires_grad_(False)


def inputs(height: int, width: int, batch: int = 1, text_lens=(TEXT_TOKENS,)):
    g = torch.Generator("cuda").manual_seed(1)
    tokens = (height // 16) * (width // 16)
    latents = torch.randn(batch, tokens, 64, generator=g, device="cuda", dtype=torch.bfloat16)
    embeds = torch.randn(batch, max(text_lens), 3584, generator=g, device="cuda", dtype=torch.bfloat16)
    return latents, embeds, [(1, height // 16, width // 16)]


def stock_forward(model, latents, embeds, shape, mask=None):
    n = latents.shape[0]
    t = torch.full((n,), 0.5, device="cuda", dtype=latents.dtype)
    return model(hidden_states=latents, timestep=t, encoder_hidden_states=embeds,
                 encoder_hidden_states_mask=mask, img_shapes=[shape] * n, return_dict=False)[0]


def dynamo_counters() -> dict:
    from torch._dynamo.utils import counters

    return {k: dict(v) for k, v in counters.items() if k in ("stats", "graph_break", "recompiles")}


def uncompile(model) -> None:
    """Undo regional compile (it sets each block's ``_compiled_call_impl``) and dynamo caches."""
    for block in model.transformer_blocks:
        block._compiled_call_impl = None
    torch._dynamo.reset()


def gpu_clocks(fn, calls: int = 8) -> dict:
    """Mean SM clock / power while ``fn`` runs back to back (nvidia-smi sampled every 20 ms): dense
    bf16 GEMMs hit the power limit, and the clock drop shows up as every kernel getting slower."""
    import subprocess

    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw,temperature.gpu", "--format=csv,noheader,nounits",
                            "-lms", "20"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    finally:
        smi.terminate()
    rows = []
    for line in smi.communicate()[0].splitlines()[10:]:  # skip the samples taken before the calls
        try:
            rows.append([float(x) for x in line.split(",")])
        except ValueError:
            continue
    if not rows:
        return {"error": "no nvidia-smi samples"}
    col = list(zip(*rows))
    return {"sm_clock_mhz_mean": statistics.mean(col[0]), "sm_clock_mhz_min": min(col[0]),
            "power_w_mean": statistics.mean(col[1]), "power_w_max": max(col[1]),
            "temperature_c_max": max(col[2]), "samples": len(rows)}


def kernel_profile(fn, steps: int = 1) -> dict:
    """Where one forward's GPU time goes: kernel time by category (torch.profiler), top kernels, and
    GPU busy time vs wall time (the gap is launch overhead / idle, what CUDA graphs would remove)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / steps
    kernels: dict[str, float] = {}
    for e in prof.key_averages():
        if e.device_type.name == "CUDA" and getattr(e, "device_time_total", 0) > 0 and not e.key.startswith("## Call"):
            kernels[e.key] = kernels.get(e.key, 0.0) + e.device_time_total / 1e6 / steps

    def category(name: str) -> str:
        n = name.lower()
        if any(k in n for k in ("flash", "fmha", "cudnn", "attention", "sdpa")):
            return "attention"
        if any(k in n for k in ("gemm", "xmma", "cutlass", "nvjet", "matmul", "sm90", "scaled_mm", "f8f8")):
            return "gemm"
        if n.startswith("triton"):
            return "triton_fused"
        if "copy" in n or "cat" in n:
            return "copy_cat"
        return "other_elementwise"

    cats: dict[str, float] = {}
    for k, v in kernels.items():
        cats[category(k)] = cats.get(category(k), 0.0) + v
    busy = sum(kernels.values())
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:15]
    ops = []  # matmul / attention ops by input shapes: which GEMM got slower, not just which kernel
    for e in prof.key_averages(group_by_input_shape=True):
        if e.device_type.name == "CPU" and any(k in e.key for k in ("mm", "linear", "scaled_dot", "attention", "_scaled_mm")):
            t = getattr(e, "device_time_total", 0) / 1e6 / steps
            if t > 5e-4:
                ops.append({"op": e.key, "shapes": str(e.input_shapes)[:160], "calls": e.count // steps, "s": round(t, 5)})
    ops.sort(key=lambda o: -o["s"])
    return {"wall_s": wall, "gpu_busy_s": busy, "idle_fraction": max(0.0, 1 - busy / wall),
            "by_category_s": {k: round(v, 5) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
            "top_kernels": [{"name": k[:120], "s": round(v, 5)} for k, v in top], "ops_by_shape": ops[:20]}


def run_variant(model, variant: str, sizes, refs, res, profile: bool = False, cfg_ratio: bool = False) -> None:
    """Variants: [fast_][eager|cudnn|regional|regional_infer|full][_autotune][_fp8][_fa8].

    ``fast_`` switches to the workbench attention processor (in place: it stays on for later
    variants). ``regional`` compiles with dynamic=False; ``regional_infer`` runs under
    ``torch.inference_mode``; ``_autotune`` passes ``perf.inductor_mode=max-autotune-no-cudagraphs``;
    (Run 9 measured ``_opaque``: attention through the ``workbench::joint_attention`` custom op, which
    the fast processor now always uses for unmasked attention; runs 1-8 used Inductor's lowering.)
    ``_fp8`` quantises with the workbench's torchao path (fp8 rowwise GEMMs) AFTER the q/k/v fusion
    and BEFORE compiling, the order ``cached_components`` uses; it is irreversible, so the caller
    hands fp8 variants a fresh model. ``_fa8`` runs the attention through cuDNN's fp8 kernel
    (``perf.attention_kernel=fp8_cudnn``; needs ``fast_``). ``profile`` adds a kernel breakdown; ``cfg_ratio`` times true CFG (batched and as two forwards).
    """
    from torch._dynamo.utils import counters

    from workbench.config import AttentionKernel, CompileMode, Fp8Scale, InductorMode, PerfConfig
    from workbench.compiling import compile_transformer
    from workbench.perf import prepare_attention
    from workbench.precision import _quantize_fp8_torchao

    counters.clear()
    fast = variant.startswith("fast_")
    fa8 = variant.endswith("_fa8")
    fp8 = variant.removesuffix("_fa8").endswith("_fp8")
    autotune = "_autotune" in variant
    mode = variant.removeprefix("fast_").removesuffix("_fa8").removesuffix("_fp8").replace("_autotune", "")
    compile_mode = {"regional": CompileMode.regional, "regional_infer": CompileMode.regional,
                    "full": CompileMode.full, "eager": CompileMode.none, "cudnn": CompileMode.none}[mode]
    perf = PerfConfig(fast_attention=fast, compile=compile_mode,
                      inductor_mode=InductorMode.max_autotune_no_cudagraphs if autotune else InductorMode.default,
                      attention_backend="_native_cudnn" if mode == "cudnn" else None,
                      attention_kernel=AttentionKernel.fp8_cudnn if fa8 else AttentionKernel.sdpa)
    prepare_attention(model, perf)
    if fp8:
        _quantize_fp8_torchao(model, Fp8Scale.row)
    fwd = compile_transformer(model, perf)
    grad_ctx = torch.inference_mode if mode == "regional_infer" else torch.no_grad
    run_sizes = sizes if mode in ("regional", "eager", "cudnn") else [1328]
    for size in run_sizes:
        latents, embeds, shape = inputs(size, size)
        with grad_ctx():
            tc = time.perf_counter()
            out = stock_forward(fwd, latents, embeds, shape).float()
            torch.cuda.synchronize()
            first = time.perf_counter() - tc
            r = cuda_time(lambda: stock_forward(fwd, latents, embeds, shape), repeat=3)
            if profile and size == 1328:
                r["profile"] = kernel_profile(lambda: stock_forward(fwd, latents, embeds, shape))
                r["gpu_clocks"] = gpu_clocks(lambda: stock_forward(fwd, latents, embeds, shape))
            if cfg_ratio and size == 1328:
                neg = embeds[:, :8]
                two = (torch.cat([latents, latents]), torch.cat([embeds, embeds]))
                stock_forward(fwd, *two, shape)  # compile the batch-2 graph outside the timing
                r["true_cfg_batched_equal_lengths"] = cuda_time(lambda: stock_forward(fwd, *two, shape), repeat=3)
                stock_forward(fwd, latents, neg, shape)
                r["true_cfg_two_forwards_128_8_tokens"] = cuda_time(
                    lambda: (stock_forward(fwd, latents, embeds, shape), stock_forward(fwd, latents, neg, shape)), repeat=3)
                tokens = (size // 16) ** 2
                r["flop_ratio_two_forwards"] = flop_ratio(tokens, TEXT_TOKENS, 8)
        r["first_call_s"] = first
        r["max_abs_diff_vs_stock"] = (out - refs[size]).abs().max().item()
        r["rel_l2_vs_stock"] = ((out - refs[size]).norm() / refs[size].norm()).item()
        r["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
        res.put(f"workbench/forward/{size}/cfg1/{variant}", r)
    res.put(f"workbench/dynamo/{variant}", {k: dict(v) for k, v in counters.items()
                                            if k in ("stats", "graph_break", "recompiles")})


def flop_ratio(image_tokens: int, text_tokens: int, neg_tokens: int, dim: int = 3072, mlp: int = 12288) -> float:
    """FLOPs of cond + uncond forwards over one cond forward (per block: the image stream's linear
    layers, both text streams' and the joint attention): the floor of a true-CFG step's cost ratio."""

    def forward(text: int) -> float:
        seq = image_tokens + text
        linear = 2 * seq * (4 * dim * dim + 2 * dim * mlp)  # qkv + out, mlp in + out, both streams
        attention = 4 * seq * seq * dim  # QK^T and PV
        return linear + attention

    return (forward(text_tokens) + forward(neg_tokens)) / forward(text_tokens)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", default="1024,1328")
    p.add_argument("--variants", default="regional,regional_infer,full,fast_eager,fast_regional,fast_full")
    p.add_argument("--e2e", action="store_true", help="also run 8-step / 20-step end-to-end images")
    p.add_argument("--profile", default="", help="comma-separated variants to profile (kernel breakdown at 1328); 'stock' too")
    p.add_argument("--cfg-ratio", default="", help="comma-separated variants whose true-CFG cost to measure")
    p.add_argument("--skip-stock-cfg", action="store_true", help="skip stock true-CFG / masked-batch timings")
    args = p.parse_args()

    res = Results.open(args.out)
    torch.backends.cuda.matmul.allow_tf32 = True
    t0 = time.perf_counter()
    model = build_transformer()
    torch.cuda.synchronize()
    res.put("build_transformer_s", time.perf_counter() - t0)
    res.put("transformer_params_B", sum(p.numel() for p in model.parameters()) / 1e9)

    sizes = [int(s) for s in args.sizes.split(",")]
    variants = args.variants.split(",")
    refs = {}
    with torch.no_grad():
        for size in sizes:
            latents, embeds, shape = inputs(size, size)
            refs[size] = stock_forward(model, latents, embeds, shape).float()
            torch.cuda.reset_peak_memory_stats()
            r = cuda_time(lambda: stock_forward(model, latents, embeds, shape))
            r["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
            if size == 1328 and "stock" in args.profile.split(","):
                r["profile"] = kernel_profile(lambda: stock_forward(model, latents, embeds, shape))
                r["gpu_clocks"] = gpu_clocks(lambda: stock_forward(model, latents, embeds, shape))
            res.put(f"stock/forward/{size}/cfg1", r)
            if args.skip_stock_cfg:
                continue
            # stock true CFG = two separate forwards with different text lengths (diffusers pipeline)
            neg = embeds[:, :8]
            res.put(f"stock/forward/{size}/true_cfg", cuda_time(
                lambda: (stock_forward(model, latents, embeds, shape), stock_forward(model, latents, neg, shape))))
            # workbench true CFG = one batched forward, uncond padded + masked
            both = torch.cat([embeds, torch.cat([neg, torch.zeros_like(embeds[:, 8:])], 1)])
            mask = torch.zeros(2, embeds.shape[1], dtype=torch.bool, device="cuda")
            mask[0] = True
            mask[1, :8] = True
            lat2 = torch.cat([latents, latents])
            res.put(f"workbench/forward/{size}/true_cfg_batched", cuda_time(
                lambda: stock_forward(model, lat2, both, shape, mask)))

    if not args.skip_stock_cfg:
        with torch.no_grad():
            # bf16 noise floor: the same forward at batch 2 (other GEMM tilings) vs batch 1
            latents, embeds, shape = inputs(1328, 1328)
            two = stock_forward(model, torch.cat([latents, latents]), torch.cat([embeds, embeds]), shape)[:1].float()
            res.put("noise_floor/1328/batch2_vs_batch1", {
                "max_abs_diff": (two - refs[1328]).abs().max().item(),
                "rel_l2": ((two - refs[1328]).norm() / refs[1328].norm()).item(),
                "ref_abs_max": refs[1328].abs().max().item()})
            res.put("workbench/forward/1328/true_cfg_batched_equal_lengths", cuda_time(
                lambda: stock_forward(model, torch.cat([latents, latents]), torch.cat([embeds, embeds]), shape), repeat=3))

    e2e = None
    if args.e2e:
        e2e = E2E(model)
        e2e.stock(res)
        e2e.ours(res, "eager", model)

    with torch.no_grad():
        for variant in variants:
            if variant == "eager":
                continue
            if "_fp8" in variant:  # quantisation is in place: a fresh model for each fp8 variant
                model = None
                torch.cuda.empty_cache()
                model = build_transformer()
            try:
                run_variant(model, variant, sizes, refs, res, profile=variant in args.profile.split(","),
                            cfg_ratio=variant in args.cfg_ratio.split(","))
            except Exception as err:  # record and go on: one failing variant must not lose the others
                res.put(f"workbench/forward/error/{variant}", {"error": repr(err), "trace": traceback.format_exc()[-2000:]})
            finally:
                uncompile(model)

    if e2e is not None:
        from workbench.config import CompileMode, PerfConfig
        from workbench.perf import apply_perf

        fwd = apply_perf(model, PerfConfig(fast_attention=True, compile=CompileMode.regional))
        e2e.ours(res, "fast_regional", fwd)
        uncompile(model)
    res.put("total_s", time.perf_counter() - t0)


class E2E:
    """Whole 1328x1328 images with embeds given: stock ``QwenImagePipeline`` vs workbench stages."""

    SIZE = 1328
    CASES = (("8step_cfg1", 8, 1.0), ("20step_truecfg4", 20, 4.0))

    def __init__(self, model):
        from diffusers import AutoencoderKLQwenImage

        from workbench.models.components import Components
        from workbench.pipeline import Workbench

        torch.manual_seed(0)
        with torch.device("cuda"):
            self.vae = AutoencoderKLQwenImage().to(torch.bfloat16).eval()
        g = torch.Generator("cuda").manual_seed(2)
        self.embeds = torch.randn(1, TEXT_TOKENS, 3584, generator=g, device="cuda", dtype=torch.bfloat16)
        self.neg = torch.randn(1, 8, 3584, generator=g, device="cuda", dtype=torch.bfloat16)
        self.model = model
        self.bench = Workbench(Components(None, None, model, self.vae, torch.device("cuda")))
        self.stock_latents = {}

    def _cond(self, e):
        from workbench.conditioning import Conditioning

        return Conditioning(e, torch.ones(e.shape[:2], dtype=torch.bool, device="cuda"), [[0] * e.shape[1]], [0], "t", ["p"])

    def stock(self, res: Results) -> None:
        from diffusers import QwenImagePipeline

        from workbench.config import SamplerConfig
        from workbench.stages.schedule import make_scheduler

        size = self.SIZE
        for name, steps, cfg in self.CASES:
            pipe = QwenImagePipeline(make_scheduler(SamplerConfig(steps=steps, cfg=cfg)), self.vae, None, None, self.model)
            pipe.set_progress_bar_config(disable=True)
            kw = dict(negative_prompt_embeds=self.neg, negative_prompt_embeds_mask=torch.ones(1, 8, dtype=torch.long, device="cuda")) if cfg > 1 else {}

            def call(output_type):
                return pipe(prompt_embeds=self.embeds, prompt_embeds_mask=torch.ones(1, TEXT_TOKENS, dtype=torch.long, device="cuda"),
                            height=size, width=size, num_inference_steps=steps, true_cfg_scale=cfg,
                            generator=torch.Generator("cpu").manual_seed(0), output_type=output_type, **kw).images

            torch.cuda.reset_peak_memory_stats()
            r = cuda_time(lambda: call("pt"), warmup=1, repeat=2)
            r["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
            lat = call("latent").float()
            r["rerun_max_abs_diff"] = (call("latent").float() - lat).abs().max().item()
            self.stock_latents[name] = lat
            res.put(f"stock/e2e/{size}/{name}", r)
        lat = torch.randn(1, (size // 16) ** 2, 64, device="cuda", dtype=torch.bfloat16)
        res.put(f"stock/vae_decode/{size}", cuda_time(lambda: self.bench.decode(lat, size, size), warmup=1, repeat=3))

    def ours(self, res: Results, label: str, transformer) -> None:
        from workbench.config import SamplerConfig

        self.bench.components.transformer = transformer
        size = self.SIZE
        for name, steps, cfg in self.CASES:
            sampler = SamplerConfig(steps=steps, cfg=cfg)

            def latents():
                lat = self.bench.prepare_latents([0], size, size)
                return self.bench.denoise(lat, self._cond(self.embeds), sampler, size, size,
                                          self._cond(self.neg) if cfg > 1 else None, progress=False)

            torch.cuda.reset_peak_memory_stats()
            r = cuda_time(lambda: self.bench.decode(latents(), size, size), warmup=1, repeat=2)
            r["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
            mine, ref = latents().float(), self.stock_latents[name]
            r["max_abs_latent_diff_vs_stock"] = (mine - ref).abs().max().item()
            r["rel_l2_latent_vs_stock"] = ((mine - ref).norm() / ref.norm()).item()
            r["stock_latent_abs_max"] = ref.abs().max().item()
            res.put(f"workbench/e2e/{size}/{name}/{label}", r)


if __name__ == "__main__":
    main()
