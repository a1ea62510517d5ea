"""Qwen-Image-2.1's components from a discovered entry: Qwen3-VL, the single-stream DiT, the RGBA VAE.

The same two steps as ``load.py`` (``prepare_*`` reads headers and config.json only, ``Prepared.load``
reads the weights, tensor by tensor through ``stream.py``), into the 2.1 classes: transformers'
``Qwen3VLForConditionalGeneration``, diffusers' ``QwenImage21Transformer2DModel`` and
``AutoencoderKLQwenImage21``. Single files carry no config: ``infer21.py`` reads the architecture off
the shapes. ComfyUI's 2.1 DiT files fuse the SwiGLU gate and up projections; ``keys.transformer21_names``
splits them. A diffusers folder's tokenizer (``processor/``) is used when it is Qwen3's.
"""

from __future__ import annotations

from pathlib import Path

from workbench.config import ModelConfig
from workbench.loading import infer21
from workbench.loading.discover import Entry
from workbench.loading.errors import LoadError
from workbench.loading.header import read_header
from workbench.loading.keys import identity_names, text_encoder_names, transformer21_names
from workbench.loading.prepared import folder_source, prepare_module, prepare_vl_encoder
from workbench.loading.stream import TensorSource


def _qwen3_tokenizer_for(folder: Path | None):
    """The folder's tokenizer when it ships one (a diffusers 2.1 folder keeps it in processor/), checked to be
    Qwen3's (its four added tokens at 151665..151668); else the vendored Qwen3 tokenizer."""
    from workbench.tokenizer import QWEN3_EXTRA_TOKENS, QWEN3_FIRST_EXTRA_ID, load_qwen3_tokenizer, load_tokenizer

    for candidate in ([folder, folder.parent / "processor", folder.parent / "tokenizer"] if folder else []):
        if (candidate / "tokenizer.json").is_file() or (candidate / "vocab.json").is_file():
            try:
                tok = load_tokenizer(str(candidate))
            except ValueError as err:
                raise LoadError(f"{candidate}: {err}") from None
            ids = tok.convert_tokens_to_ids(list(QWEN3_EXTRA_TOKENS))
            if ids != list(range(QWEN3_FIRST_EXTRA_ID, QWEN3_FIRST_EXTRA_ID + len(ids))):
                raise LoadError(f"{candidate}: the tokenizer maps {', '.join(QWEN3_EXTRA_TOKENS)} to {ids}, expected "
                                f"{QWEN3_FIRST_EXTRA_ID}..; it is not Qwen3's (Qwen-Image-2.1 needs the Qwen3-VL tokenizer)")
            return tok, str(candidate)
    return load_qwen3_tokenizer(), "vendored (Qwen3: the Qwen2.5 BPE + 4 added tokens)"


def prepare_text_encoder(entry: Entry, cfg: ModelConfig):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from workbench.models.arch21 import vision_token_ids

    report = {"layout": entry.layout, "dtype": entry.dtype, "family": entry.family}
    if entry.path.is_dir():
        config = Qwen3VLConfig.from_pretrained(str(entry.path))
        source = folder_source(entry.path, text_encoder_names)
        report["architecture"] = "config.json"
        tokenizer, report["tokenizer"] = _qwen3_tokenizer_for(entry.path)
    else:
        header = read_header(entry.path)
        source = TensorSource.single(header, text_encoder_names(header.tensors))
        text, vision, report["inferred"] = infer21.text_encoder(source.shapes, cfg.arch_rules, cfg.tiny, entry.path)
        config = Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings="lm_head.weight" not in source.names,
                               **vision_token_ids())
        tokenizer, report["tokenizer"] = _qwen3_tokenizer_for(None)
    return prepare_vl_encoder(entry, Qwen3VLForConditionalGeneration, config, source, report, tokenizer)


def prepare_transformer(entry: Entry, cfg: ModelConfig):
    from diffusers import QwenImage21Transformer2DModel

    det = entry.detected
    report = {"layout": entry.layout, "dtype": entry.dtype, "family": entry.family,
              "variant": f"{entry.variant} (from {det.variant_from})"}
    if det.sample_sigmas:
        report["sample_sigmas"] = f"{det.sample_sigmas} (model_index.json; the run's sampler.sigmas)"
    if entry.path.is_dir():
        config = dict(QwenImage21Transformer2DModel.load_config(str(entry.path)))
        source = folder_source(entry.path, transformer21_names)
        report["architecture"] = "config.json"
    else:
        header = read_header(entry.path)
        source = TensorSource.single(header, transformer21_names(header.tensors))
        config, report["inferred"] = infer21.transformer(source.shapes, cfg.arch_rules, cfg.tiny, entry.path)
    return prepare_module("transformer", entry, QwenImage21Transformer2DModel, config, source, report, "diffusion transformer")


def prepare_vae(entry: Entry, cfg: ModelConfig):
    from diffusers import AutoencoderKLQwenImage21

    report = {"layout": entry.layout, "dtype": entry.dtype, "family": entry.family}
    if entry.path.is_dir():
        config = dict(AutoencoderKLQwenImage21.load_config(str(entry.path)))
        source = folder_source(entry.path, identity_names)
        report["architecture"] = "config.json"
    else:
        header = read_header(entry.path)
        source = TensorSource.single(header, identity_names(header.tensors))
        config, report["inferred"] = infer21.vae(source.shapes, entry.path)
    return prepare_module("vae", entry, AutoencoderKLQwenImage21, config, source, report, "VAE")


PREPARERS = {"text_encoder": prepare_text_encoder, "transformer": prepare_transformer, "vae": prepare_vae}
