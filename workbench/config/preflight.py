"""The checks of a run config that need the machine or the files, run once by the build step.

``workbench.config.build.to_run_config`` calls ``check_run`` after the dataclasses' value checks
(``__post_init__``) pass, so every problem is still refused before any model loads: the reference
images fit the template, the template's ``drop_until`` ends on a token boundary (the vendored
tokenizer), the device exists, image files open, LoRA files are found under the model roots, the
activations fit the free memory, and prompts carry no control tokens.
"""

from __future__ import annotations

import sys
from typing import Callable

from workbench.config import limits
from workbench.config.accel import AccelMethod, state_bytes
from workbench.config.model import ModelSource
from workbench.config.precision import DType
from workbench.config.run import Config
from workbench.config.template import TemplateConfig
from workbench.values import plain
from workbench.errors import ConfigError


def check_run(cfg: Config, edit_templates: Callable[[], dict[str, tuple[int, int]]]) -> None:
    """Every machine / file check of ``cfg``, in order; ``edit_templates()`` ({name: (min, max)} of the
    shipped edit templates, read from their files when called) words the image-count message."""
    check_image_count(cfg, edit_templates)
    check_template_boundary(cfg.template)
    limits.check_device(cfg.device, ConfigError)
    check_attention_kernel(cfg)
    if cfg.init_image is not None:
        limits.open_image(cfg.init_image, "init_image", decode=False, error=ConfigError)
    for i, path in enumerate(cfg.images):
        limits.open_image(path, f"images[{i}]", decode=False, error=ConfigError)
    check_lora_files(cfg)
    check_turbo_sigmas(cfg)
    check_weights_memory(cfg)
    if cfg.height is not None:  # else sized by the reference images: the pipeline checks once known
        check_run_memory(cfg, cfg.height, cfg.width, cfg.device)
    check_control_tokens(cfg)


def check_attention_kernel(cfg: Config) -> None:
    """``perf.attention_kernel=fp8_cudnn`` needs a Hopper-class GPU and the cuDNN frontend; no fp8 kernel takes
    a padding mask, which ``sampler.cfg_batching=padded`` always makes."""
    kernel = plain(cfg.perf.attention_kernel)
    if kernel == "sdpa":
        return
    if plain(cfg.sampler.cfg_batching) == "padded" and cfg.sampler.cfg > 1:
        raise ConfigError(f"perf.attention_kernel={kernel} with sampler.cfg_batching=padded: the fp8 attention takes no "
                          "padding mask; use sampler.cfg_batching=auto (cond and uncond batched when equally long) or "
                          "perf.attention_kernel=sdpa")
    if cfg.batch_size > 1 and len(cfg.prompts) > 1:
        raise ConfigError(f"perf.attention_kernel={kernel} with batch_size={cfg.batch_size} and {len(cfg.prompts)} prompts: "
                          "prompts of different lengths in one forward are padded, and the fp8 attention takes no padding "
                          "mask; use batch_size=1 (or one prompt per run, e.g. a prompts axis in a sweep) or "
                          "perf.attention_kernel=sdpa")
    if kernel == "fp8_cudnn":
        from workbench.fp8_attention import check_fp8_cudnn
        from workbench.models.components import resolve_device

        reason = check_fp8_cudnn(str(resolve_device(cfg.device)))  # the device exists: limits.check_device ran
        if reason:
            raise ConfigError(reason)


def check_image_count(cfg: Config, edit_templates: Callable[[], dict[str, tuple[int, int]]]) -> None:
    """The reference images must fit the template; the message says what each edit template takes."""
    n, t = len(cfg.images), cfg.template
    if t.min_images <= n <= t.max_images or cfg.model.variant == "layered":  # Layered's image goes to the VAE only
        return
    edit_templates = edit_templates()
    want = f"{t.min_images}" if t.min_images == t.max_images else f"{t.min_images}-{t.max_images}"
    takes = ", ".join(f"{name} {lo if lo == hi else f'{lo}-{hi}'}" for name, (lo, hi) in edit_templates.items())
    fits = [name for name, (lo, hi) in edit_templates.items() if lo <= n <= hi and name != t.name]
    msg = f"template '{t.name}' takes {want} reference image(s) but images has {n}"
    if n == 0:
        raise ConfigError(f"{msg}; pass images='[path.png]'")
    if fits:
        raise ConfigError(f"{msg}; pick an edit template that takes {n}: template={fits[0]} "
                          f"(reference images per edit template: {takes})")
    most = max((hi for lo, hi in edit_templates.values()), default=t.max_images)
    raise ConfigError(f"{msg}; no edit template takes {n} (reference images per edit template: {takes}). Pass "
                      f"at most {most}, e.g. combine several references into one image")


def check_template_boundary(t: TemplateConfig) -> None:
    """A drop_until that ends inside a token fails here, naming the template, not at encode time."""
    if t.drop_until is None:
        return
    after = t.text[t.text.index(t.drop_until) + len(t.drop_until):][:1]
    if t.drop_until.endswith("\n") and after and not after.isspace():
        return  # Qwen's pre-tokenizer always ends a piece at a newline followed by a non-space: no need to tokenize
    from workbench.templates import TemplateError, check_boundary  # loads the vendored tokenizer

    try:
        check_boundary(t)
    except TemplateError as err:
        raise ConfigError(str(err)) from None


def check_lora_files(cfg: Config) -> None:
    """LoRAs given by name are found under model.roots (else $WORKBENCH_MODELS, else ./models)."""
    if not cfg.lora.items:
        return
    from workbench.lora import resolve_lora_file  # imports torch: only when there are LoRAs

    for i, item in enumerate(cfg.lora.items):
        try:
            resolve_lora_file(item.file, cfg.model.roots or None)
        except FileNotFoundError as err:
            raise ConfigError(f"lora.items[{i}].file: {err}") from None


def check_turbo_sigmas(cfg: Config) -> None:
    """Qwen-Image-2.1-Turbo files sample on their fixed sigma grid: a run of them with ``sampler.sigmas`` null
    is refused, naming the grid (a diffusers folder's model_index.json ``sample_sigmas``) and the overrides.

    Why refuse instead of taking the folder's grid silently: the config (and every record of it) then holds
    the schedule that ran; a record re-run or a sweep never depends on what a model folder says, and
    switching Turbo to another grid stays an explicit ``sampler.sigmas`` value."""
    if cfg.model.source != ModelSource.files or cfg.model.variant.family != "qwen-image-2.1" or cfg.sampler.sigmas:
        return
    from workbench.loading.discover import resolve
    from workbench.loading.errors import LoadError

    try:
        entry = resolve(cfg.model.transformer, "transformer", cfg.model.roots or None)
        grid = entry.detected.sample_sigmas if entry.detected else None
    except LoadError:
        grid = None  # not found: the load names it
    if grid:
        raise ConfigError(
            f"model.transformer={cfg.model.transformer} is Qwen-Image-2.1-Turbo: its model_index.json ships sample_sigmas "
            f"{grid} (diffusers samples on this grid, CFG off) but sampler.sigmas is null; add "
            f"sampler=qwen21_turbo 'sampler.sigmas={grid}' sampler.steps={len(grid)}")
    if cfg.model.variant.value == "qwen21_turbo":
        raise ConfigError(
            "model.variant=qwen21_turbo with sampler.sigmas null: Turbo samples on a fixed sigma grid, which single "
            "files do not carry; set sampler.sigmas (and sampler.steps) to the grid of the Turbo release (the "
            "sample_sigmas of its diffusers model_index.json), or use model.variant=qwen21")


def check_run_memory(cfg: Config, height: int, width: int, device: str) -> None:
    """``limits.check_memory`` for one forward batch of ``cfg`` at ``height`` x ``width`` on ``device``,
    with the model's own widths (the tiny spec, or the real Qwen-Image's / Qwen-Image-2.1's for model files)."""
    bytes_of = {DType.float32: 4, DType.bfloat16: 2, DType.float16: 2}
    tiny = cfg.model.source == ModelSource.tiny
    batch = min(cfg.batch_size, len(cfg.prompts) * len(cfg.seeds))
    if tiny:
        spec = cfg.model.tiny
        hidden, vae_base, layers = spec.transformer.num_heads * spec.transformer.head_dim, spec.vae.base_dim, spec.transformer.num_layers
    elif cfg.model.variant.family == "qwen-image-2.1":
        from workbench.models import arch21

        hidden, vae_base, layers = arch21.DIT_HIDDEN, arch21.VAE_DECODER_BASE_DIM, 0  # accel is refused on 2.1
    else:
        hidden, vae_base, layers = limits.REAL_HIDDEN, limits.REAL_VAE_BASE_DIM, limits.REAL_LAYERS
    width_of = bytes_of[DType(cfg.precision.transformer)]
    cfg_batch = 2 if cfg.sampler.cfg > 1 else 1
    estimate = limits.estimate_bytes(batch, height, width, hidden=hidden, vae_base_dim=vae_base,
                                     transformer_bytes=width_of, vae_bytes=bytes_of[DType(cfg.precision.vae)],
                                     cfg_batch=cfg_batch)
    what, fix = f"height={height} width={width} batch_size={batch}", "lower height/width or batch_size"
    cached = state_bytes(cfg.accel, layers, height * width // 256, hidden, batch * cfg_batch, width_of)
    if cached:
        what += f" with accel={cfg.accel.name} (of it {limits.fmt_bytes(cached)} of outputs its hooks keep between steps)"
        taylor = cfg.accel.method == AccelMethod.taylorseer and cfg.accel.max_order > 1
        fix += ", or accel=none" + (" or a lower accel.max_order" if taylor else "")
    limits.check_memory(estimate + cached, device, what, ConfigError, fix)


def seeded_parameters(spec) -> int:
    """Parameters of a seeded model (``source: tiny``) from its sizes (the real DiT: 20.38 B for 20.43 B): per DiT block two streams
    of attention (8 h^2), MLPs (16 h^2) and modulation (12 h^2); the language model's embedding and head,
    attention and gated MLP per layer; the vision tower's blocks (the VAE is small beside them)."""
    t, te, v = spec.transformer, spec.text_encoder, spec.vision
    h = t.num_heads * t.head_dim
    dit = 36 * h * h * t.num_layers
    head_dim = te.hidden_size // te.num_heads
    layer = 2 * te.hidden_size**2 + 2 * te.hidden_size * te.num_kv_heads * head_dim + 3 * te.hidden_size * te.intermediate_size
    language = 2 * 152064 * te.hidden_size + layer * te.num_layers
    vision = v.depth * (4 * v.hidden_size**2 + 3 * v.hidden_size * v.intermediate_size)
    return dit + language + vision


def weight_width(precision) -> int:
    """Bytes per weight a build holds, the wider of the transformer's and the text encoder's dtypes
    (both hold almost every parameter); the model panel's fit warning uses the same width."""
    bytes_of = {DType.float32: 4, DType.bfloat16: 2, DType.float16: 2}
    return max(bytes_of.get(DType(precision.transformer), 1), bytes_of.get(DType(precision.text_encoder), 1))


def weights_message(what: str, need: int, precision, free: int, where: str, reclaim: int = 0) -> str:
    """The one wording of "these weights do not fit", shared by the refusal below and the model
    panel's warning (``models.catalogue.fit_report``), so both name the same numbers. ``free`` includes the
    ``reclaim`` bytes of other resident builds a new build releases (``models.build``)."""
    freed = f" (with the {limits.fmt_bytes(reclaim)} of other resident builds it would release)" if reclaim else ""
    return (f"{what}: its weights need about {limits.fmt_bytes(need)} "
            f"({DType(precision.transformer).value} / {DType(precision.text_encoder).value}), more than the "
            f"{limits.fmt_bytes(free)} free on {where}{freed}")


def check_weights_memory(cfg: Config) -> None:
    """A seeded model whose weights alone exceed the device's free memory (``model=random_full``, 28 B
    parameters, on a CPU) is refused before a single weight is drawn."""
    if cfg.model.source != ModelSource.tiny:
        return  # files: their sizes are read from the headers when they load
    built = sys.modules.get("workbench.models.build")  # loaded once this process built a model (not imported here)
    if built is not None and built.is_resident(cfg):
        return  # the same weights are resident and reused: the free memory they take is not needed again
    need = seeded_parameters(cfg.model.tiny) * weight_width(cfg.precision)
    free, where = limits.available_memory(cfg.device)
    reclaim = built.reclaimable_bytes(cfg) if built is not None else 0  # resident builds building it would release
    if need > free + reclaim:
        raise ConfigError(f"{weights_message(f'model={cfg.model.name}', need, cfg.precision, free + reclaim, where, reclaim)}"
                          "; it is meant for a CUDA GPU with room for them (device=cuda precision=bf16), or use model=tiny")


def check_control_tokens(cfg: Config) -> None:
    """Prompts smuggling ``<|im_end|>`` & co. are refused here, before models load (not at encode)."""
    from workbench.templates import check_prompts

    prompts = {f"prompts[{i}]": p for i, p in enumerate(cfg.prompts)}
    if cfg.sampler.cfg > 1:
        prompts["negative_prompt"] = cfg.negative_prompt
    check_prompts(cfg.template, prompts)
