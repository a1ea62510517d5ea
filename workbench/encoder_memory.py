"""Where the text encoder lives and in what it is stored (``precision.encoder_memory``,
``precision.text_encoder_storage``): issue 19, a 24 GB card at full speed.

- ``stream``: diffusers' block-level group offloading, applied so that each decoder layer (and each vision
  block) is its own group: weights in pinned host memory, the next group copied on a side stream while the
  current one computes. Why not ``apply_group_offloading(encoder, "block_level")`` on the whole model (what
  ``memory=group_offload`` did before): block level splits only the *top-level* ModuleLists of the module it
  is given, and a VL model's layers sit two levels down (``model.language_model.layers``,
  ``model.visual.blocks``), so the whole encoder became one group, copied in one go, synchronously, for every
  prompt (14.2 s of an 18.9 s generation on an H200, run15/17). ``block_modules`` names the levels to
  descend into. The LM head is never streamed: the encode stage calls the inner model (hidden states only);
  the token embedding stays resident (``stream_encoder``).
- ``cpu``: the encoder stays in host memory and runs there; the conditioning alone moves to the device.
- fp8 storage: diffusers' ``apply_layerwise_casting`` (any ``nn.Module``) stores the linear weights in
  float8_e4m3fn and upcasts each to the compute dtype for its forward; embeddings, norms and the vision
  patch embedding stay as they are. Half the bytes to keep resident or to stream; its error is measured in
  tests/test_encoder_memory.py.
"""

from __future__ import annotations

import torch

from workbench.config import EncoderMemory, PrecisionConfig, WeightStorage

# modules kept in the compute dtype under fp8 storage: normalisations, embeddings (a lookup, not a matmul),
# the rotary tables and the vision patch / position embeddings
FP8_SKIP = ("norm", "embed", "rotary", "patch_embed", "pos_embed", "lm_head")
# the levels of a Qwen2.5-VL / Qwen3-VL model to descend into: their ModuleLists become the groups
STREAM_LEVELS = ("visual", "language_model")


def inner_model(text_encoder) -> torch.nn.Module:
    """The VL model without its LM head (``Qwen2_5_VLModel`` / ``Qwen3VLModel``): what encoding runs."""
    return getattr(text_encoder, "model", text_encoder)


def apply_encoder_storage(text_encoder, precision: PrecisionConfig) -> None:
    if precision.text_encoder_storage != WeightStorage.float8_e4m3fn:
        return
    from diffusers.hooks import apply_layerwise_casting

    from workbench.models.components import TORCH_DTYPES

    apply_layerwise_casting(inner_model(text_encoder), storage_dtype=torch.float8_e4m3fn,
                            compute_dtype=TORCH_DTYPES[precision.text_encoder], skip_modules_pattern=FP8_SKIP)


def place_encoder(components, precision: PrecisionConfig, device: torch.device) -> None:
    """Put the encoder where ``precision.encoder_placement`` says (resident: already there) and set
    ``components.encoder_device``, where its inputs go."""
    placement = precision.encoder_placement
    if placement == EncoderMemory.cpu:
        components.text_encoder.to("cpu")
        components.encoder_device = torch.device("cpu")
    elif placement == EncoderMemory.stream:
        stream_encoder(components.text_encoder, device)
        components.encoder_device = device


def stream_encoder(text_encoder, device: torch.device) -> list[str]:
    """Block-level group offloading of the inner VL model, one group per decoder layer / vision block,
    prefetched on a side stream; returns the group ids (what a test checks)."""
    from diffusers.hooks import apply_group_offloading
    from diffusers.hooks.group_offloading import _GROUP_OFFLOADING

    model = inner_model(text_encoder)
    text_encoder.to("cpu")
    # the token embedding stays resident: the outer model looks the tokens up before the language model's
    # forward runs (where its group would be onloaded), and a lookup reads a few rows of a 1-1.2 GB table
    language = model.language_model
    embed, language.embed_tokens = language.embed_tokens, None
    try:
        apply_group_offloading(
            model, onload_device=device, offload_device=torch.device("cpu"), offload_type="block_level",
            num_blocks_per_group=1, use_stream=device.type == "cuda", record_stream=device.type == "cuda",
            block_modules=list(STREAM_LEVELS),
        )
    finally:
        language.embed_tokens = embed.to(device)
    names = {id(m): name for name, m in model.named_modules()}
    groups: list[str] = []
    for sub in model.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        hook = registry.get_hook(_GROUP_OFFLOADING) if registry is not None else None
        if hook is not None and hook.group.modules:
            label = "+".join(names.get(id(m), "?") for m in hook.group.modules)
            if label not in groups:
                groups.append(label)
    return groups
