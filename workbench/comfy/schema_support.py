"""What our config schema can express right now, so the writer emits a key or, lacking one, a comment."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Optional


@dataclass
class SchemaSupport:
    """What the config schema can express right now (other parts of the workbench add keys over time).

    The importer writes a key only when the schema has it, and a YAML comment otherwise.
    """

    model_files: dict[str, str]  # role -> key under model. (diffusion_model -> transformer)
    files_source: bool  # model.source=files exists (needed to use model file keys)
    loras: bool  # lora.items is accepted (not refused by the schema)
    cfg_norm: bool  # sampler.guidance=cfg_norm + sampler.cfg_norm_strength
    schedulers: set[str]  # sampler.scheduler values; empty when the key does not exist


def schema_support() -> SchemaSupport:
    from workbench.config import schema

    candidates = {
        "diffusion_model": ("transformer", "transformer_file", "transformer_path", "diffusion_model", "unet", "dit"),
        "text_encoder": ("text_encoder", "text_encoder_file", "text_encoder_path", "clip"),
        "vae": ("vae", "vae_file", "vae_path"),
    }
    hints = typing.get_type_hints(schema.ModelConfig)
    strings = {f.name for f in dataclasses.fields(schema.ModelConfig) if hints[f.name] in (str, Optional[str])}
    files = {role: next(n for n in names if n in strings) for role, names in candidates.items()
             if any(n in strings for n in names)}
    try:  # the first schema refused any item ("not available"); later ones only refuse missing files
        schema.LoraConfig(name="imported", items=[schema.LoraItem(file="x.safetensors", strength=1.0)])
        loras = True
    except (ValueError, TypeError) as err:
        loras = "not available" not in str(err)
    sampler_fields = {f.name for f in dataclasses.fields(schema.SamplerConfig)}
    kinds = getattr(schema, "SchedulerKind", None)
    return SchemaSupport(
        model_files=files,
        files_source="files" in schema.ModelSource.__members__,
        loras=loras,
        cfg_norm="cfg_norm" in schema.Guidance.__members__ and "cfg_norm_strength" in sampler_fields,
        schedulers={k.value for k in kinds} if kinds is not None and "scheduler" in sampler_fields else set(),
    )
