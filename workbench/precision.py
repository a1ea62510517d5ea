"""Precision and memory levers applied to built components.

- ``transformer_storage=float8_e4m3fn``: diffusers ``enable_layerwise_casting``: weights stored in
  fp8, each layer upcast to the compute dtype (``precision.transformer``) for its forward. Runs on
  CPU; norms, embeddings and the patch / output projections stay in the compute dtype (diffusers'
  default skip list). ``tests/test_precision.py`` measures the error on the tiny model.
- ``quantization=fp8_torchao``: torchao fp8 GEMMs (dynamic activation + weight scales, per row) for
  the image-stream linear layers of the blocks (``fp8_compute_filter``). Needs CUDA with compute
  capability >= 8.9 and the ``torchao`` package; anything else is an error.
- ``memory``: ``all_on_device``; ``model_offload`` (accelerate ``cpu_offload_with_hook``, chained in
  a ring so that running any model sends the previous one back to the CPU); ``group_offload``
  (diffusers block-level group offloading of the transformer and the text encoder, VAE resident).
  Both offload modes move weights between CPU and GPU: on a CPU run they have nothing to do, and
  asking for them is an error rather than a silent no-op.
- the text encoder's placement and storage (``encoder_memory``, ``text_encoder_storage``):
  ``workbench/encoder_memory.py``.
- fp16: Qwen-Image's activations overflow float16; the denoise side's numerics guard
  (``stages/numerics.py``) stops the run at the first non-finite prediction and says so.
"""

from __future__ import annotations

import torch

from workbench.config import EncoderMemory, Fp8Scale, MemoryMode, PrecisionConfig, Quantization, WeightStorage
from workbench.encoder_memory import apply_encoder_storage, place_encoder
from workbench.errors import InputError
from workbench.models.components import TORCH_DTYPES


class PrecisionError(InputError, RuntimeError):
    """A precision / memory setting cannot run here; the message names the setting and the fix."""


def check_device(precision: PrecisionConfig, device: torch.device) -> None:
    """Fail before any weights move when a setting needs an accelerator this run does not have."""
    if precision.quantization == Quantization.fp8_torchao:
        if device.type != "cuda":
            raise PrecisionError(
                f"precision.quantization=fp8_torchao (precision={precision.name}) runs fp8 matrix multiplies "
                f"on a CUDA GPU (compute capability >= 8.9); this run's device is {device}. On CPU use "
                "precision.transformer_storage=float8_e4m3fn (fp8 storage, bf16 compute) or precision=bf16"
            )
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            raise PrecisionError(
                f"precision.quantization=fp8_torchao needs compute capability >= 8.9 (Ada / Hopper), this GPU "
                f"has {major}.{minor}; use precision.transformer_storage=float8_e4m3fn instead"
            )
    if precision.encoder_memory == EncoderMemory.stream and device.type != "cuda":
        raise PrecisionError(
            f"precision.encoder_memory=stream streams the text encoder from host memory to a GPU; this run's device "
            f"is {device}, where it already lives in host memory. Leave precision.encoder_memory null (or cpu) on CPU"
        )
    if precision.memory != MemoryMode.all_on_device and device.type != "cuda":
        raise PrecisionError(
            f"precision.memory={precision.memory.value} moves weights between CPU and GPU memory; this run's "
            f"device is {device}, where every model already lives in CPU memory. Use "
            "precision.memory=all_on_device on CPU (or device=cuda)"
        )


def apply_precision(components, precision: PrecisionConfig):
    """Apply storage, quantisation and memory mode to freshly built ``Components`` (in place)."""
    device = components.device  # check_device ran before the build (models/build.py)
    transformer = components.transformer
    compute = TORCH_DTYPES[precision.transformer]

    if precision.transformer_storage == WeightStorage.float8_e4m3fn:
        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute)
    if precision.quantization == Quantization.fp8_torchao:
        _quantize_fp8_torchao(transformer, Fp8Scale(precision.fp8_scale))

    apply_encoder_storage(components.text_encoder, precision)
    if precision.memory == MemoryMode.model_offload:
        from accelerate import cpu_offload_with_hook

        hooks = []
        for model in [m for m in (components.text_encoder, transformer, components.vae) if m is not None]:
            model.to("cpu")
            _, hook = cpu_offload_with_hook(model, execution_device=device, prev_module_hook=hooks[-1] if hooks else None)
            hooks.append(hook)
        hooks[0].hook.prev_module_hook = hooks[-1]  # ring: the text encoder's forward sends the VAE back
        if device.type == "cuda":
            torch.cuda.empty_cache()
    else:
        if precision.memory == MemoryMode.group_offload:
            from diffusers.hooks import apply_group_offloading

            transformer.to("cpu")
            apply_group_offloading(transformer, onload_device=device, offload_device=torch.device("cpu"),
                                   offload_type="block_level", num_blocks_per_group=precision.group_offload_blocks,
                                   use_stream=True)
        place_encoder(components, precision, device)  # resident, streamed, or on the CPU
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return components


# The image stream's linear layers of each block carry ~98 % of a forward's FLOPs (M = image tokens).
# The text stream's (M = prompt tokens) and the modulations (M = 1) stay in bf16: no speed to gain, and
# cuBLASLt refused the fp8 GEMM for a short prompt on the H100 (CUBLAS_STATUS_NOT_SUPPORTED, run11).
FP8_COMPUTE_LAYERS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_qkv", "attn.to_out.0", "img_mlp.net.0.proj", "img_mlp.net.2")


def fp8_compute_filter(module: torch.nn.Module, name: str) -> bool:
    """torchao ``quantize_`` filter: the image-stream linear layers of the transformer blocks."""
    return (isinstance(module, torch.nn.Linear) and name.startswith("transformer_blocks.")
            and name.split(".", 2)[2] in FP8_COMPUTE_LAYERS)


def _quantize_fp8_torchao(transformer, scale: Fp8Scale) -> None:
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_
    except ImportError as err:
        raise PrecisionError(
            "precision.quantization=fp8_torchao needs the torchao package (matching your torch); "
            f"pip install torchao ({err})"
        ) from None
    # set_inductor_config=False: torchao's default switches on Inductor's coordinate-descent tuning for the whole
    # process, which compiled and timed ~280 Triton kernel variants in-process on the first fp8 call (180 s on
    # the H200 vs 17 s for bf16) and ~70 of them again in every warm process. perf.coordinate_descent opts in.
    granularity = PerRow() if scale == Fp8Scale.row else PerTensor()
    config = Float8DynamicActivationFloat8WeightConfig(granularity=granularity, set_inductor_config=False)
    quantize_(transformer, config, filter_fn=fp8_compute_filter)
    use_gelu_tanh_for_fp8_mlps(transformer)


def use_gelu_tanh_for_fp8_mlps(transformer) -> int:
    """Give the fp8-quantised MLPs (image stream) ``gelu_tanh``; returns how many were changed."""
    changed = 0
    for name, module in transformer.named_modules():
        proj = getattr(module, "proj", None)
        if getattr(module, "approximate", None) == "tanh" and fp8_compute_filter(proj, f"{name}.proj"):
            module.gelu = gelu_tanh  # diffusers' GELU.forward calls self.gelu(hidden_states)
            changed += 1
    return changed


SQRT_8_OVER_PI = 1.5957691216057308  # 2 * sqrt(2 / pi)


def gelu_tanh(gate: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation; compiled, as x * sigmoid(2u) with u = sqrt(2/pi) (x + 0.044715 x^3).

    0.5 (1 + tanh u) = sigmoid(2u): the same function. In the fp8 MLP, Inductor fuses the GELU into fc2's
    per-row quantisation, a two-pass kernel that evaluates it twice per element; libdevice's tanh is a
    software routine, sigmoid an exp. Measured on the H200 (run36, 6889 x 12288, one block): 0.258 ms with
    tanh, 0.191 ms with sigmoid, 0.105 ms for the quantisation alone. The two forms differ by ~1e-7 in float32
    (then fp8 keeps 3 mantissa bits); eager calls run torch's own GELU.
    """
    if not torch.compiler.is_compiling():
        return torch.nn.functional.gelu(gate, approximate="tanh")
    x = gate.float()
    return (x * torch.sigmoid(SQRT_8_OVER_PI * (x + 0.044715 * x * x * x))).to(gate.dtype)
