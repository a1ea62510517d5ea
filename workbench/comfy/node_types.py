"""The ComfyUI node types this importer knows: widget orders, and which types route, note or output."""

# Positional widget names of the node types we read (UI format stores only ``widgets_values``).
WIDGETS: dict[str, list[str]] = {
    "KSampler": ["seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"],
    "KSamplerAdvanced": ["add_noise", "noise_seed", "control_after_generate", "steps", "cfg", "sampler_name",
                         "scheduler", "start_at_step", "end_at_step", "return_with_leftover_noise"],
    "UNETLoader": ["unet_name", "weight_dtype"],
    "CLIPLoader": ["clip_name", "type", "device"],
    "VAELoader": ["vae_name"],
    "LoraLoaderModelOnly": ["lora_name", "strength_model"],
    "LoraLoader": ["lora_name", "strength_model", "strength_clip"],
    "ModelSamplingAuraFlow": ["shift"],
    "CFGNorm": ["strength"],
    "CLIPTextEncode": ["text"],
    "TextEncodeQwenImageEdit": ["prompt"],
    "TextEncodeQwenImageEditPlus": ["prompt"],
    "EmptySD3LatentImage": ["width", "height", "batch_size"],
    "EmptyLatentImage": ["width", "height", "batch_size"],
    "LoadImage": ["image", "upload"],
    "PrimitiveInt": ["value", "control_after_generate"],
    "PrimitiveFloat": ["value"],
    "PrimitiveBoolean": ["value"],
    "PrimitiveString": ["value"],
    "PrimitiveStringMultiline": ["value"],
    "PrimitiveNode": ["value", "control_after_generate"],  # legacy frontend-only primitive
    "ComfySwitchNode": ["switch"],
}
PRIMITIVES = {"PrimitiveInt", "PrimitiveFloat", "PrimitiveBoolean", "PrimitiveString", "PrimitiveStringMultiline",
              "PrimitiveNode"}
SWITCHES = {"ComfySwitchNode"}
NOTES = {"MarkdownNote", "Note"}
OUTPUTS = {"SaveImage", "SaveImageAdvanced", "PreviewImage"}
TEMPLATES = {  # text-encode node -> (template, model variant)
    "CLIPTextEncode": ("qwen_t2i", "t2i"),
    "TextEncodeQwenImageEdit": ("qwen_edit", "edit"),
    "TextEncodeQwenImageEditPlus": ("qwen_edit_plus", "edit_2509"),
}
# ComfyUI sampler names -> sampler.scheduler; only euler / simple is the same computation as ours
# (fixed-shift flow Euler, sampler comfy_euler); the others are the nearest we have and are reported.
SCHEDULER_KINDS = {"euler": "euler", "heun": "heun", "uni_pc": "unipc", "uni_pc_bh2": "unipc"}
