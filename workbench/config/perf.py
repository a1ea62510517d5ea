"""The ``perf`` group (conf/perf/): speed switches of the diffusion transformer (workbench/perf.py)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

from workbench.errors import ConfigError


class CompileMode(str, Enum):
    none = "none"
    regional = "regional"  # compile the repeated transformer block once (seconds)
    full = "full"  # compile the whole transformer (minutes)


class InductorMode(str, Enum):
    """torch.compile ``mode`` (TorchInductor); the speed of each is in benchmarks/README.md."""

    default = "default"
    max_autotune_no_cudagraphs = "max-autotune-no-cudagraphs"  # autotuned GEMMs, fused epilogues
    max_autotune = "max-autotune"  # the same + CUDA graphs
    reduce_overhead = "reduce-overhead"  # CUDA graphs only


class AttentionKernel(str, Enum):
    """The kernel of the fast processor's unmasked joint attention (workbench/fp8_attention.py)."""

    sdpa = "sdpa"  # torch's SDPA in the model's dtype (cuDNN flash attention on Hopper)
    fp8_cudnn = "fp8_cudnn"  # cuDNN's fused fp8 attention, per-tensor scales (Hopper+, nvidia-cudnn-frontend)
    fp8_emulated = "fp8_emulated"  # the same fp8 arithmetic in float32 torch ops: its quality cost on any device


@dataclass
class PerfConfig:
    """Speed switches of the diffusion transformer (workbench/perf.py); each measured in benchmarks/."""

    name: str = "eager"
    fast_attention: bool = False  # fused QKV + real-valued RoPE attention processor
    compile: CompileMode = CompileMode.none
    inductor_mode: InductorMode = InductorMode.default  # only used when compile != none
    # TorchInductor's coordinate-descent tuning of the compiled kernels' launch configs (inductor_mode=default
    # only; the max-autotune modes tune already). Off: on the H200 it added minutes to the first fp8 compile
    # and ~1 min to every warm start (kernels compiled and timed in-process), see benchmarks/README.md.
    coordinate_descent: bool = False
    attention_backend: Optional[str] = None  # diffusers attention dispatcher backend, e.g. _native_cudnn
    # fp8 attention trades exactness for speed: measured speed and error in benchmarks/README.md
    attention_kernel: AttentionKernel = AttentionKernel.sdpa
    # Qwen-Image-2.1: keep the text / condition-image keys and values of the first step for the later ones
    # (diffusers' use_kv_cache; only the target's tokens are recomputed). Changes low-precision bits, not
    # the image's content (diffusers' docstring); no effect on the 20B family.
    prefix_kv_cache: bool = True
    # The Qwen-Image VAE's causal 3x3x3 convolutions as the 3x3 ones they equal on a single frame
    # (workbench/vae_frames.py): a third of the decoder's multiply-adds, the same sums up to rounding order.
    # Set per run on the resident VAE (never rebuilds); 2.1's VAE is 2-D already.
    vae_single_frame: bool = False
    # Save the compiled block with Dynamo's trace, so a new process loads it instead of tracing the block again
    # (workbench/precompiled.py; torch's AOT compile). perf.compile=regional without CUDA graphs only.
    precompile: bool = False

    def __post_init__(self) -> None:
        kernel = AttentionKernel(self.attention_kernel)
        if kernel != AttentionKernel.sdpa and (not self.fast_attention or self.attention_backend):
            raise ConfigError(
                f"perf.attention_kernel={kernel.value} runs inside the workbench's fused attention processor: it needs "
                f"perf.fast_attention=true and perf.attention_backend=null (got fast_attention={self.fast_attention}, "
                f"attention_backend={self.attention_backend}). Use perf=fast, or perf.attention_kernel=sdpa")
        if self.coordinate_descent and InductorMode(self.inductor_mode) != InductorMode.default:
            raise ConfigError(
                f"perf.coordinate_descent=true with perf.inductor_mode={InductorMode(self.inductor_mode).name}: that mode "
                "already tunes the kernels. Use perf.inductor_mode=default with perf.coordinate_descent=true, or drop "
                "perf.coordinate_descent")
