"""LoRAs on the resident transformer: read any common key style, apply through forward hooks.

Why hand-written rather than diffusers' ``load_lora_weights`` (0.42.1):
- it silently loads NOTHING for bare ``X.lora_A/B`` keys and for bare ``X.lora_down/up`` keys
  without ``.alpha`` (checked on the tiny model; ``tests/test_lora.py`` pins it), and errors on
  ``transformer.X.lora_A`` + ``transformer.X.alpha`` (it prefixes ``transformer.`` twice);
- it needs PEFT and injects adapter modules into the model, while a researcher sweeps strengths and
  swaps LoRAs per run: here a strength change is a float update and a swap replaces small hook
  tables; the transformer is never rebuilt or reloaded.

Key styles (``style`` in ``LoraWeights.styles``; ``X`` = a dotted module name of the transformer):
    diffusers  transformer.X.lora_A.weight / lora_B.weight     (diffusers / PEFT)
    bare       X.lora_A.weight / lora_B.weight                  (PEFT state dicts, musubi, DiffSynth)
    down_up    X.lora_down.weight / lora_up.weight + X.alpha    (lightx2v, DiffSynth, older trainers)
    comfyui    diffusion_model.X.<A/B or down/up> (+ .alpha)    (ComfyUI saves / loads)
    kohya      lora_unet_<X with . -> _>.lora_down/up + .alpha  (kohya sd-scripts; mapped back to X
                                                                by matching the model's module names)

Alpha (``LoraAlpha``): ``apply`` scales each pair by ``alpha / rank`` where the file has ``X.alpha``
(ComfyUI for every style; diffusers 0.42.1's Qwen converter does too, and applies
``lora_alpha / r`` from a diffusers file's ``lora_adapter_metadata``), ``ignore`` never does
(DiffSynth-Studio's ``GeneralLoRALoader`` adds ``strength * B @ A`` and never reads ``.alpha``).

Every key must be used: keys that match no ``nn.Linear``, shapes that do not fit, half pairs and
unknown LoRA kinds (LoKr, LoHa, ``diff_b``, DoRA) raise ``LoraError`` listing them.

Modules: ``files`` (names -> files, reading, header checks), ``parse`` (keys -> Linear pairs),
``apply`` (hooks / fuse on the resident transformer). The names below are the public API.
"""

from workbench.lora.apply import LoraSet, apply_loras, lora_set
from workbench.lora.files import (
    _RAW_CACHE,
    LoraError,
    LoraNotFound,
    check_lora_header,
    read_lora_file,
    resolve_lora_file,
)
from workbench.lora.parse import LoraPair, LoraWeights, check_lora_files, linear_shapes, load_lora, parse_lora

__all__ = [
    "LoraError", "LoraNotFound", "LoraPair", "LoraSet", "LoraWeights", "apply_loras", "check_lora_files",
    "check_lora_header", "linear_shapes", "load_lora", "lora_set", "parse_lora", "read_lora_file",
    "resolve_lora_file", "_RAW_CACHE",
]
