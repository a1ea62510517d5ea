"""The embedded models: the real Qwen-Image classes at tiny sizes, seeded random weights, and
optionally trained weights loaded over them (``model.weights``; ``model=tiny`` ships a trained
transformer + VAE, ``model=tiny_random`` none). The text encoder is always the seeded one: the trained
model was trained against it frozen, so it is regenerated here rather than shipped.

Each component is initialised under its own seed (seed, seed+1, seed+2) inside ``fork_rng`` so
that building it neither depends on nor disturbs the caller's random state, and resizing one
component does not change the weights of the others.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import torch

from workbench.config import ModelConfig, TinySpec, Variant
from workbench.models import arch
from workbench.models.arch import VOCAB_SIZE


def _seeded(seed: int, build):
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return build()


@contextmanager
def init_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on ``device`` in ``dtype`` (model.init_on_device).

    Why: a full-size random model (28 B parameters) does not fit a float32 build on the CPU and
    takes minutes there; on a GPU in bf16 it takes seconds. The weights then come from that
    device's random generator, so they differ from a CPU build (the identity says so).
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def check_rope_sizes(spec: TinySpec) -> None:
    """The RoPE splits must fit the head sizes (both families: mRoPE of the encoder, 3-axis RoPE of the DiT)."""
    t, s = spec.text_encoder, spec.transformer
    head_dim = t.hidden_size // t.num_heads
    if 2 * sum(t.mrope_section) != head_dim:
        raise ValueError(
            f"model.tiny.text_encoder.mrope_section {list(t.mrope_section)} must sum to head_dim/2 = {head_dim // 2}"
        )
    if sum(s.axes_dims_rope) != s.head_dim:
        raise ValueError(f"model.tiny.transformer.axes_dims_rope {list(s.axes_dims_rope)} must sum to head_dim={s.head_dim}")


def text_encoder_config(spec: TinySpec):
    from transformers import Qwen2_5_VLConfig

    check_rope_sizes(spec)
    t, v = spec.text_encoder, spec.vision
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=VOCAB_SIZE,
            hidden_size=t.hidden_size,
            intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_layers,
            num_attention_heads=t.num_heads,
            num_key_value_heads=t.num_kv_heads,
            rms_norm_eps=arch.RMS_NORM_EPS,
            max_position_embeddings=arch.TINY_MAX_POSITIONS,
            rope_parameters=arch.rope_parameters(t.mrope_section),
        ),
        vision_config=dict(
            depth=v.depth,
            hidden_size=v.hidden_size,
            intermediate_size=v.intermediate_size,
            num_heads=v.num_heads,
            out_hidden_size=t.hidden_size,
            patch_size=arch.VISION_PATCH,
            spatial_merge_size=arch.VISION_MERGE,
            temporal_patch_size=arch.VISION_TEMPORAL_PATCH,
            window_size=arch.VISION_WINDOW,
            fullatt_block_indexes=list(v.fullatt_block_indexes),
        ),
        **arch.vision_token_ids(),
    )


def build_text_encoder(cfg: ModelConfig):
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = text_encoder_config(cfg.tiny)
    model = _seeded(cfg.seed, lambda: Qwen2_5_VLForConditionalGeneration(config)).eval()
    if cfg.weights:  # trained model: its frozen encoder must not depend on transformers' init code
        explicit_init(model, cfg.seed)
    return model


def explicit_init(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter from its own generator, keyed by (seed, parameter name).

    Why: the trained tiny model's text encoder is frozen and regenerated at load time (its 152064-row
    embedding would take 19 MB to ship). transformers' own init order and rules may change between
    releases; this depends only on the parameter names and torch's CPU normal generator. Norm weights
    are 1, biases 0, everything else N(0, 0.02) (the Qwen2.5-VL initializer range).
    """
    import zlib

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.zero_()
            elif "norm" in name and p.dim() == 1:
                p.fill_(1.0)
            else:
                gen = torch.Generator("cpu").manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * 0.02)
    return model


def text_encoder_checksum(model: torch.nn.Module) -> float:
    """A float64 sum of |weights| (the first 4096 rows of the vocabulary tables, every other parameter
    whole): the trained weights record it and loading compares, so a drift fails loudly."""
    with torch.no_grad():
        return float(sum(p.detach()[:4096].double().abs().sum() if p.shape[0] == VOCAB_SIZE else p.detach().double().abs().sum()
                         for p in model.parameters()))


def check_text_encoder(model: torch.nn.Module, cfg: ModelConfig) -> None:
    """The regenerated frozen encoder must be the one the weights were trained against."""
    from workbench.loading.errors import LoadError

    want = trained_info(cfg).get("text_encoder_checksum")
    got = text_encoder_checksum(model)
    if want is not None and abs(got - want) > 1e-6 * abs(want):
        raise LoadError(
            f"model.weights={cfg.weights!r}: the text encoder regenerated from model.seed={cfg.seed} (checksum {got:.6f}) is "
            f"not the one the weights were trained against ({want:.6f}); keep model.seed and model.tiny.text_encoder "
            "as in conf/model/tiny.yaml, or retrain (python -m workbench.training.train)"
        )


def build_transformer(cfg: ModelConfig):
    from diffusers import QwenImageTransformer2DModel

    check_rope_sizes(cfg.tiny)
    s = cfg.tiny.transformer
    return _seeded(
        cfg.seed + 1,
        lambda: QwenImageTransformer2DModel(
            patch_size=arch.PATCH_SIZE,
            in_channels=arch.IN_CHANNELS,
            out_channels=arch.OUT_CHANNELS,
            num_layers=s.num_layers,
            attention_head_dim=s.head_dim,
            num_attention_heads=s.num_heads,
            joint_attention_dim=cfg.tiny.text_encoder.hidden_size,
            axes_dims_rope=tuple(s.axes_dims_rope),
            zero_cond_t=cfg.variant == Variant.edit_2511,
            use_additional_t_cond=cfg.variant == Variant.layered,  # Layered: an extra "is RGB" time condition
            use_layer3d_rope=cfg.variant == Variant.layered,  # Layered: RoPE over (layer, h, w)
        ),
    ).eval()


def build_vae(cfg: ModelConfig, stats: Optional[dict] = None):
    """``stats``: trained ``latents_mean`` / ``latents_std`` (else the real model's, diffusers defaults)."""
    from diffusers import AutoencoderKLQwenImage

    s = cfg.tiny.vae
    # z_dim, dim_mult and temporal flags are the real model's (diffusers defaults).
    return _seeded(
        cfg.seed + 2,
        lambda: AutoencoderKLQwenImage(base_dim=s.base_dim, num_res_blocks=s.num_res_blocks,
                                       input_channels=4 if cfg.variant == Variant.layered else 3, **(stats or {})),
    ).eval()


WEIGHT_FILES = ("transformer.safetensors", "vae.safetensors", "trained.json")


def weights_dir(cfg: ModelConfig) -> Path:
    """The folder of ``model.weights`` ("asset:NAME" = workbench/assets/NAME), checked to hold the files."""
    from workbench.config.limits import resolve_asset
    from workbench.loading.errors import LoadError

    name = cfg.weights or ""
    folder = resolve_asset(name)
    missing = [f for f in WEIGHT_FILES if not (folder / f).is_file()]
    if missing:
        raise LoadError(
            f"model.weights={name!r}: {folder} lacks {', '.join(missing)}; point model.weights at a folder written by "
            "`python -m workbench.training.train` (or use model=tiny_random for random weights)"
        )
    return folder


def weights_digest(cfg: ModelConfig) -> str:
    """sha256 (12 hex) of the trained files: part of the components' identity (cache keys, records)."""
    folder = weights_dir(cfg)
    h = hashlib.sha256()
    for f in WEIGHT_FILES:
        h.update((folder / f).read_bytes())
    return h.hexdigest()[:12]


def trained_info(cfg: ModelConfig) -> dict:
    """trained.json: the VAE's latents_mean / latents_std and the frozen text encoder's checksum."""
    return json.loads((weights_dir(cfg) / "trained.json").read_text())


def vae_stats(cfg: ModelConfig) -> Optional[dict]:
    if not cfg.weights:
        return None
    stats = trained_info(cfg)
    return {"latents_mean": list(stats["latents_mean"]), "latents_std": list(stats["latents_std"])}


def load_trained(module: torch.nn.Module, cfg: ModelConfig, slot: str) -> torch.nn.Module:
    """Load ``<slot>.safetensors`` (stored float16) into ``module`` in its own dtype, every key matched."""
    from safetensors.torch import load_file

    from workbench.loading.errors import LoadError

    state = load_file(str(weights_dir(cfg) / f"{slot}.safetensors"))
    dtype = next(module.parameters()).dtype
    try:
        module.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[:2]
        raise LoadError(
            f"model.weights={cfg.weights!r}: {slot}.safetensors does not fit model.tiny's {slot} sizes "
            f"({' '.join(first)}); set model.tiny to the sizes it was trained with (conf/model/tiny.yaml)"
        ) from None
    return module
