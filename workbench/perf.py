"""Speed switches of the diffusion transformer (and one of the VAE), each measured in benchmarks/README.md.

- ``fast_attention``: our attention processor for the Qwen-Image double-stream attention: one fused
  QKV GEMM per stream (diffusers' ``fuse_projections``; the stock processor ignores the fused
  weights) and RoPE in real arithmetic (cos / sin) instead of complex numbers, which TorchInductor
  cannot fuse ("does not support code generation for complex operators"). Same math as
  diffusers 0.42.1's ``QwenDoubleStreamAttnProcessor2_0`` (Apache-2.0), from which its structure is
  adapted; ``tests/test_perf.py`` checks equal outputs.
- ``compile``: ``regional`` compiles the repeated block once (``compile_repeated_blocks``: seconds),
  ``full`` compiles the whole model (minutes). ``inductor_mode`` passes TorchInductor's mode
  (``max-autotune-no-cudagraphs`` benchmarks GEMM configs and fuses epilogues; minutes on first use).
  How it compiles (text length dynamic, the persistent cache) is ``workbench.compiling``.
- ``attention_backend``: diffusers' dispatcher backend name (e.g. ``_native_cudnn``), or null.
- ``vae_single_frame``: the VAE's causal 3-D convolutions as 2-D ones on one frame (``workbench.vae_frames``).
- ``attention_kernel``: the fast processor's unmasked attention in fp8 (``fp8_cudnn``: cuDNN's fused kernel on
  Hopper; ``fp8_emulated``: its arithmetic in torch ops, any device): ``workbench.fp8_attention``.
"""

from __future__ import annotations

from workbench.errors import InputError
import torch
from torch import nn

from workbench.compiling import compile_transformer
from workbench.config import AttentionKernel, CompileMode, MemoryMode, PerfConfig, PrecisionConfig, WeightStorage
from workbench.fp8_attention import check_fp8_cudnn, fp8_joint_attention


class PerfError(InputError):
    pass


def rope_real(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x (B, S, H, D) by angles given as cos / signed sin (S, D), in float32.

    A pair (re, im) becomes (re cos - im sin, im cos + re sin) = x * cos + (im, re) * (-sin, sin): the pair
    swap is one indexed load in the compiled kernel (stacking (-im, re) compiled to masked loads per parity,
    run35), and multiplying by a negated sin is exactly the negated product, so the result is the same bits.
    """
    xf = x.float()
    swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(3)
    return (xf * cos[None, :, None] + swapped * sin[None, :, None]).to(x.dtype)


def _cos_sin(freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Complex (S, D/2) rotations -> real (S, D) cos and signed sin ((-sin, sin) per pair), for ``rope_real``."""
    sin = torch.stack([-freqs.imag, freqs.imag], dim=-1).flatten(-2)
    return freqs.real.repeat_interleave(2, dim=-1).float(), sin.float()


class RealRope(nn.Module):
    """Wraps the model's ``pos_embed`` so blocks receive real cos / sin instead of complex freqs."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        img, txt = self.inner(*args, **kwargs)
        return _cos_sin(img), _cos_sin(txt)


@torch.library.custom_op("workbench::joint_attention", mutates_args=())
def joint_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Unmasked SDPA on (B, S, H, D) tensors, exactly as eager diffusers calls it (permuted views).

    A custom op is opaque to TorchInductor: the compiled block keeps the eager layouts around it.
    Measured on the H100 (run9): same speed as Inductor's own lowering in bf16, and it is what makes
    fp8 (torchao) compile with the fused projections: without it Inductor laid out the MLP input so
    that cuBLASLt refused the fp8 GEMM (CUBLAS_STATUS_NOT_SUPPORTED).
    """
    out = torch.nn.functional.scaled_dot_product_attention(*(t.permute(0, 2, 1, 3) for t in (query, key, value)))
    return out.permute(0, 2, 1, 3).contiguous()


@joint_attention.register_fake
def _(query, key, value):
    return torch.empty_like(query)


class FastQwenAttnProcessor:
    """Joint text + image attention with fused QKV projections and real-valued RoPE; ``kernel`` is
    ``perf.attention_kernel`` (the unmasked attention in the model's dtype, or in fp8)."""

    _attention_backend = None
    _parallel_config = None

    def __init__(self, kernel: AttentionKernel = AttentionKernel.sdpa):
        self.kernel = AttentionKernel(kernel)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, encoder_hidden_states_mask=None,
                 attention_mask=None, image_rotary_emb=None):
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        if attention_mask is not None:
            raise ValueError("FastQwenAttnProcessor builds its joint mask from encoder_hidden_states_mask")
        if encoder_hidden_states_mask is not None:
            image_mask = hidden_states.new_ones(hidden_states.shape[:2], dtype=torch.bool)
            attention_mask = torch.cat([encoder_hidden_states_mask, image_mask], dim=1)[:, None, None, :]
        seq_txt = encoder_hidden_states.shape[1]
        head_dim = attn.inner_dim // attn.heads

        # (B, S, 3 * inner) -> three (B, S, H, head_dim)
        img_q, img_k, img_v = attn.to_qkv(hidden_states).unflatten(-1, (3, -1, head_dim)).unbind(2)
        txt_q, txt_k, txt_v = attn.to_added_qkv(encoder_hidden_states).unflatten(-1, (3, -1, head_dim)).unbind(2)
        img_q, img_k = attn.norm_q(img_q), attn.norm_k(img_k)
        txt_q, txt_k = attn.norm_added_q(txt_q), attn.norm_added_k(txt_k)
        (img_cos, img_sin), (txt_cos, txt_sin) = image_rotary_emb
        img_q, img_k = rope_real(img_q, img_cos, img_sin), rope_real(img_k, img_cos, img_sin)
        txt_q, txt_k = rope_real(txt_q, txt_cos, txt_sin), rope_real(txt_k, txt_cos, txt_sin)

        q, k, v = torch.cat([txt_q, img_q], dim=1), torch.cat([txt_k, img_k], dim=1), torch.cat([txt_v, img_v], dim=1)
        plain = attention_mask is None and self._attention_backend is None and self._parallel_config is None
        if self.kernel != AttentionKernel.sdpa:
            if not plain:
                raise PerfError(
                    f"perf.attention_kernel={self.kernel.value} runs unmasked, single-device attention; this forward has "
                    f"{'a padding mask (prompts of different lengths in one batch, or sampler.cfg_batching=padded)' if attention_mask is not None else 'context parallelism'}. "
                    "Run prompts of different lengths as separate cells (or sampler.cfg_batching=auto), or use "
                    "perf.attention_kernel=sdpa")
            out = fp8_joint_attention(q, k, v, self.kernel.value)
        elif plain:
            out = joint_attention(q, k, v)
        else:
            out = dispatch_attention_fn(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                        backend=self._attention_backend, parallel_config=self._parallel_config)
        out = out.flatten(2, 3).to(img_q.dtype)
        txt_out, img_out = out[:, :seq_txt], out[:, seq_txt:]
        img_out = attn.to_out[0](img_out.contiguous())
        return img_out, attn.to_add_out(txt_out.contiguous())


def enable_fast_attention(transformer, kernel: AttentionKernel = AttentionKernel.sdpa) -> None:
    """Fuse QKV weights, switch every block to ``FastQwenAttnProcessor`` and the RoPE to real cos / sin."""
    if isinstance(transformer.pos_embed, RealRope):
        set_attention_kernel(transformer, kernel)
        return
    for block in transformer.transformer_blocks:
        block.attn.fuse_projections()
        # the separate projections are dead weight once fused: drop them to save memory
        for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
            delattr(block.attn, name)
        block.attn.set_processor(FastQwenAttnProcessor(kernel))
    transformer.pos_embed = RealRope(transformer.pos_embed)


def set_attention_kernel(transformer, kernel: AttentionKernel) -> None:
    """Make ``kernel`` (``perf.attention_kernel``) the fast processors' attention: set per run on the resident
    transformer, never a rebuild (a compiled block compiles once more for each kernel it meets)."""
    model = getattr(transformer, "_orig_mod", transformer)  # torch.compile wrapper (perf.compile=full)
    kernel = AttentionKernel(kernel)
    processors = [b.attn.processor for b in getattr(model, "transformer_blocks", ())
                  if isinstance(b.attn.processor, FastQwenAttnProcessor)]
    if not processors and kernel != AttentionKernel.sdpa:
        raise PerfError(f"perf.attention_kernel={kernel.value} needs the fast attention processor, which this transformer "
                        "was not built with: use perf=fast (perf.fast_attention=true)")
    if kernel == AttentionKernel.fp8_cudnn:  # the kernel is per run, so its device check is too (config: preflight)
        reason = check_fp8_cudnn(str(next(model.parameters()).device))
        if reason:
            raise PerfError(reason)
    for processor in processors:
        processor.kernel = kernel


def set_run_perf(components, perf: PerfConfig) -> None:
    """The ``perf`` switches set per run on resident models (no rebuild): attention kernel, VAE convolutions."""
    from workbench.vae_frames import set_vae_single_frame  # imports diffusers' VAE: only once models exist

    set_attention_kernel(components.transformer, perf.attention_kernel)
    set_vae_single_frame(components.vae, perf.vae_single_frame)


def check_perf(perf: PerfConfig, precision: PrecisionConfig) -> None:
    """Refuse combinations that cannot compile, before any model is built."""
    if perf.compile == CompileMode.none:
        return
    hooks = []
    if precision.transformer_storage == WeightStorage.float8_e4m3fn:
        hooks.append(f"precision.transformer_storage={precision.transformer_storage.value}")
    if precision.memory == MemoryMode.group_offload:
        hooks.append(f"precision.memory={precision.memory.value}")
    if hooks:
        raise PerfError(
            f"perf.compile={perf.compile.value} (perf={perf.name}) cannot compile a transformer with "
            f"{' and '.join(hooks)} (precision={precision.name}): their per-layer hooks move weights inside the "
            "forward, which torch.compile cannot trace. Use perf.compile=none (e.g. perf.fast_attention=true "
            "perf.compile=none), or precision=fp8_torchao for fp8 that compiles"
        )


def prepare_attention(transformer, perf: PerfConfig) -> None:
    """Attention switches; must run BEFORE precision. Fusing concatenates the q / k / v weights, which
    works on bf16 weights only: fp8-stored (layerwise casting) or torchao-quantised weights cannot be
    concatenated (on the H100 torchao raised "'Parameter' object has no attribute 'tensor_data_names'")."""
    if perf.attention_backend:
        transformer.set_attention_backend(perf.attention_backend)
    if perf.fast_attention:
        enable_fast_attention(transformer, perf.attention_kernel)


def apply_perf(transformer, perf: PerfConfig):
    """Both steps, for a model whose precision is already final in bf16 (benchmarks, tests)."""
    prepare_attention(transformer, perf)
    return compile_transformer(transformer, perf)
