"""Each component from a discovered entry into the classes the tiny model uses (the 20B family here;
Qwen-Image-2.1's files go to ``load21.py`` by the family discovery read off their names, and a file of
the other family than ``model.variant`` builds is refused: ``check_family``).

Single files carry no config: the architecture is inferred from shapes (``infer.py``). Folders
(diffusers ``transformer/`` / ``vae/``, HF Qwen2.5-VL folders, HF cache snapshots) bring config.json.
Either way weights go through ``stream.py``: names and shapes checked first, then tensor by tensor
to the device and dtype. transformers' and diffusers' own ``from_pretrained`` are not used for
weights because they fill missing tensors with random values (with a warning) instead of failing.

Loading is two steps: ``prepare_*`` reads headers and config only (slot, names, shapes, on an empty
meta model), ``Prepared.load`` reads the weights. ``load_all`` prepares all three components and
checks the run's LoRA files (``preflight``) before it loads any, so a bad VAE or LoRA fails in a
second instead of after minutes of loading the transformer.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from workbench.config import ModelConfig, Variant
from workbench.loading import infer, load21
from workbench.loading.detect import FAMILY_21, FAMILY_WORDS, KINDS
from workbench.loading.discover import Entry, resolve
from workbench.loading.errors import LoadError
from workbench.loading.header import read_header
from workbench.loading.keys import MARKERS, identity_names, strip_dit_prefix, text_encoder_names, transformer_names, wan_vae_names
from workbench.loading.prepared import Prepared, folder_source, prepare_module, prepare_vl_encoder
from workbench.loading.stream import TensorSource

SLOTS = ("text_encoder", "transformer", "vae")
log = logging.getLogger(__name__)


@dataclass
class Loaded:
    slot: str
    entry: Entry
    module: Any
    report: dict = field(default_factory=dict)  # layout, dtype, variant and what was inferred
    tokenizer: Any = None  # text encoder only


def check_family(entry: Entry, slot: str, cfg: ModelConfig) -> None:
    """A file of the other family than ``model.variant`` builds: one line naming both and the fix."""
    want = cfg.variant.family
    if not entry.family or entry.family == want:
        return
    fix = ("model.variant=qwen21 (or qwen21_turbo)" if entry.family == FAMILY_21
           else "model.variant=t2i (or t2i_2512 / edit / edit_2509 / edit_2511)")
    raise LoadError(f"{entry.path} given as model.{slot} is a {KINDS[slot]} of {FAMILY_WORDS[entry.family]}, but "
                    f"model.variant={cfg.variant.value} builds {FAMILY_WORDS[want]}; set {fix}, or give a {KINDS[slot]} "
                    f"of {FAMILY_WORDS[want]} (the two families share no component)")


def check_slot(entry: Entry, slot: str) -> None:
    """Refuse a file given for the wrong slot, saying what it is and where it belongs."""
    if entry.kind == slot:
        return
    if entry.kind in ("unreadable", "refused"):
        raise LoadError(f"{entry.path}: {entry.note}")
    found = entry.detected.describe() if entry.detected else entry.kind
    expected = (f"expected a {KINDS[slot]} (Qwen2.5-VL / Qwen3-VL / Qwen-Image)" if slot != "transformer"
                else "expected a Qwen-Image diffusion transformer")
    if entry.kind in SLOTS:
        hint = f"; give it as model.{entry.kind} instead"
    elif entry.kind == "lora":
        hint = "; LoRA files go in lora.items, not in model.*"
    else:
        hint = " (unknown architecture)"
    raise LoadError(f"{entry.path} given as model.{slot} is {found}, {expected}{hint}")


# ----------------------------------------------------------------------------- text encoder
def _tokenizer_for(folder: Path | None):
    from workbench.tokenizer import load_tokenizer

    for candidate in ([folder, folder.parent / "tokenizer"] if folder else []):
        if (candidate / "tokenizer.json").is_file() or (candidate / "vocab.json").is_file():
            return load_tokenizer(str(candidate)), str(candidate)
    return load_tokenizer(), "vendored (workbench/assets/qwen2_5_vl_tokenizer)"


def prepare_text_encoder(entry: Entry, cfg: ModelConfig) -> Prepared:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from workbench.models.arch import vision_token_ids

    check_slot(entry, "text_encoder")
    report = {"layout": entry.layout, "dtype": entry.dtype}
    if entry.path.is_dir():
        config = Qwen2_5_VLConfig.from_pretrained(str(entry.path))
        source = folder_source(entry.path, text_encoder_names)
        report["architecture"] = "config.json"
        tokenizer, report["tokenizer"] = _tokenizer_for(entry.path)
    else:
        header = read_header(entry.path)
        source = TensorSource.single(header, text_encoder_names(header.tensors))
        text, vision, report["inferred"] = infer.text_encoder(source.shapes, cfg.arch_rules, cfg.tiny, entry.path)
        config = Qwen2_5_VLConfig(
            text_config=text, vision_config=vision, tie_word_embeddings=text["tie_word_embeddings"], **vision_token_ids(),
        )
        tokenizer, report["tokenizer"] = _tokenizer_for(None)
    return prepare_vl_encoder(entry, Qwen2_5_VLForConditionalGeneration, config, source, report, tokenizer)


# ----------------------------------------------------------------------------- transformer
def prepare_transformer(entry: Entry, cfg: ModelConfig) -> Prepared:
    from diffusers import QwenImageTransformer2DModel

    check_slot(entry, "transformer")
    report = {"layout": entry.layout, "dtype": entry.dtype, "variant": f"{entry.variant} (from {entry.detected.variant_from})"}
    if entry.path.is_dir():
        config = dict(QwenImageTransformer2DModel.load_config(str(entry.path)))
        source = folder_source(entry.path, transformer_names)
        marker = bool(config.get("zero_cond_t"))
        report["architecture"] = "config.json"
    else:
        header = read_header(entry.path)
        marker = MARKERS[1] in {strip_dit_prefix(n) for n in header.tensors}
        source = TensorSource.single(header, transformer_names(header.tensors))
        config, report["inferred"] = infer.transformer(source.shapes, cfg.arch_rules, cfg.tiny, entry.path)
    config["zero_cond_t"] = marker or cfg.variant == Variant.edit_2511
    report["zero_cond_t"] = f"{config['zero_cond_t']} (" + ("from the file" if marker else f"model.variant={cfg.variant.value}") + ")"
    load = None
    if not entry.path.is_dir() and header.format == "gguf":
        from workbench.loading.gguf import load_gguf_transformer

        def load(device, dtype):
            return load_gguf_transformer(entry.path, config, device, dtype)

    return prepare_module("transformer", entry, QwenImageTransformer2DModel, config, source, report,
                          "diffusion transformer", load)


# ----------------------------------------------------------------------------- VAE
def prepare_vae(entry: Entry, cfg: ModelConfig) -> Prepared:
    from diffusers import AutoencoderKLQwenImage

    check_slot(entry, "vae")
    report = {"layout": entry.layout, "dtype": entry.dtype}
    if entry.path.is_dir():
        config = dict(AutoencoderKLQwenImage.load_config(str(entry.path)))
        source = folder_source(entry.path, identity_names)
        report["architecture"] = "config.json"
    else:
        header = read_header(entry.path)
        wan = "decoder.middle.0.residual.0.gamma" in header.tensors
        source = TensorSource.single(header, (wan_vae_names if wan else identity_names)(header.tensors))
        config, report["inferred"] = infer.vae(source.shapes, entry.path)
    return prepare_module("vae", entry, AutoencoderKLQwenImage, config, source, report, "VAE")


PREPARERS = {"text_encoder": prepare_text_encoder, "transformer": prepare_transformer, "vae": prepare_vae}


def prepare_component(slot: str, cfg: ModelConfig) -> Prepared:
    """Resolve ``model.<slot>``, read its header(s), check slot, family, names and shapes: no tensor data read."""
    return prepare_entry(resolve(getattr(cfg, slot), slot, cfg.roots or None), slot, cfg)


def prepare_entry(entry: Entry, slot: str, cfg: ModelConfig) -> Prepared:
    """``entry`` checked for ``slot`` and ``model.variant``'s family, then prepared by its family's preparer."""
    check_slot(entry, slot)
    check_family(entry, slot, cfg)
    return (load21.PREPARERS if entry.family == FAMILY_21 else PREPARERS)[slot](entry, cfg)


def load_prepared(prepared: Prepared, device: torch.device, dtype: torch.dtype) -> Loaded:
    module = prepared.load(device, dtype)
    log.info("model.%s = %s: %s", prepared.slot, prepared.entry.name, json.dumps(prepared.report, default=str))
    return Loaded(prepared.slot, prepared.entry, module, prepared.report, prepared.tokenizer)


def load_component(slot: str, cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> Loaded:
    return load_prepared(prepare_component(slot, cfg), device, dtype)


def load_text_encoder(entry: Entry, cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> Loaded:
    return load_prepared(prepare_entry(entry, "text_encoder", cfg), device, dtype)


def load_transformer(entry: Entry, cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> Loaded:
    return load_prepared(prepare_entry(entry, "transformer", cfg), device, dtype)


def load_vae(entry: Entry, cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> Loaded:
    return load_prepared(prepare_entry(entry, "vae", cfg), device, dtype)


def preflight(cfg: ModelConfig, loras: Sequence[Any] = ()) -> dict[str, Prepared]:
    """Every file of a run checked from its header before any weight is read: the three components
    (slot, names, shapes, and that they fit each other) and each LoRA file (readable safetensors of
    LoRA keys, fitting the transformer's layers). A bad VAE or LoRA then fails in a second, not after
    minutes of loading the transformer."""
    prepared = {slot: prepare_component(slot, cfg) for slot in SLOTS}
    te, dit = prepared["text_encoder"], prepared["transformer"]
    width = te.model.config.text_config.hidden_size
    joint = dit.model.config.get("joint_attention_dim") or dit.model.config.get("context_in_dim")  # 20B / 2.1
    if width != joint:
        raise LoadError(
            f"shape mismatch between components: text encoder {te.entry.path} gives {width}-wide hidden states but "
            f"transformer {dit.entry.path} expects {joint} (its text input width); use the text encoder of that model"
        )
    if loras:
        from workbench.lora import check_lora_files

        check_lora_files(loras, cfg.roots or None, dit.model)
    return prepared


def load_all(cfg: ModelConfig, dtypes: dict[str, torch.dtype], devices: dict[str, torch.device],
             loras: Sequence[Any] = ()) -> dict[str, Loaded]:
    """The three components of ``cfg`` (source=files), each onto its device (``devices[slot]``): every file
    checked first (``preflight``), then loaded."""
    prepared = preflight(cfg, loras)
    return {slot: load_prepared(prepared[slot], devices[slot], dtypes[slot]) for slot in SLOTS}

