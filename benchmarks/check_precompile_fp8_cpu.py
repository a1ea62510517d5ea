"""perf.precompile with torchao's fp8 weights, checked on a CPU (no GPU needed): the tiny model's image-stream
linears as torchao ``Float8Tensor``s, compiled and saved in one process, loaded in a second one, each compared
bit for bit with Dynamo's regional compile in the same process.

torchao refuses fp8 below compute capability 8.9; this script switches that check off (CPU ``_scaled_mm`` runs
per-tensor scales only, hence ``fp8_scale=tensor``). The check is of what torch saves and loads, not of fp8 speed.
Usage (torch 2.11 + torchao 0.17, the GPU image's versions, give the result in results/):
    python benchmarks/check_precompile_fp8_cpu.py --out benchmarks/results/cpu_precompile_fp8_torch211.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child() -> dict:
    import torch
    import torchao.float8.inference as inference
    import torchao.quantization.quant_api as quant_api

    inference._check_hardware_support = quant_api._check_hardware_support = lambda *a, **k: None
    sys.path.insert(0, str(ROOT / "tests"))
    import test_precompiled as t  # the tests' tiny-model inputs

    from workbench.compiling import CompileCounts, compile_transformer
    from workbench.config import CompileMode, ModelConfig, PerfConfig
    from workbench.models.tiny import build_transformer
    from workbench.perf import prepare_attention
    from workbench.precision import Fp8Scale, _quantize_fp8_torchao

    def build(precompile: bool):
        torch.manual_seed(0)
        model = build_transformer(ModelConfig()).eval().to(torch.bfloat16)
        perf = PerfConfig(fast_attention=True, compile=CompileMode.regional, precompile=precompile)
        prepare_attention(model, perf)
        _quantize_fp8_torchao(model, Fp8Scale("tensor"))
        return compile_transformer(model, perf)

    def forward(model, n: int):
        kw = t._inputs(n)
        kw["hidden_states"], kw["encoder_hidden_states"] = kw["hidden_states"].bfloat16(), kw["encoder_hidden_states"].bfloat16()
        with torch.no_grad():
            return model(**kw)[0]

    saved = build(True)
    weight = type(saved.transformer_blocks[0].img_mlp.net[2].weight).__name__
    outputs = {n: forward(saved, n) for n in (9, 31)}
    counts = CompileCounts.now().as_record()
    regional = build(False)
    same = all(torch.equal(outputs[n], forward(regional, n)) for n in outputs)
    return {"weight": weight, "precompile": {k: counts[k] for k in ("graphs", "precompiled_loads", "precompiled_saves",
                                                                     "precompile_fallbacks")},
            "bit_equal_to_regional": same}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    p.add_argument("--child", action="store_true")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child()))
        return
    import torch
    import torchao

    result = {"command": " ".join(["python", *sys.argv]), "torch": torch.__version__, "torchao": torchao.__version__}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
        for name in ("first_process", "second_process"):
            run = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True,
                                 check=True, cwd=ROOT)
            result[name] = json.loads(run.stdout.strip().splitlines()[-1])
            print(name, result[name], flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
