"""GGUF diffusion transformers through diffusers' own GGUF support (weights stay quantised).

diffusers' ``from_single_file`` wants a diffusers config folder; the config inferred from the GGUF
shapes is written to a temporary folder for it. Names and shapes are checked by the workbench first,
because a GGUF of another model would otherwise fail deep inside diffusers.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from workbench.loading.stream import realign


def load_gguf_transformer(path: Path, config: dict, device: torch.device, dtype: torch.dtype):
    """Names and shapes were checked by ``load.prepare_transformer`` before this reads anything."""
    from diffusers import GGUFQuantizationConfig, QwenImageTransformer2DModel

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "transformer"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"_class_name": "QwenImageTransformer2DModel", **config}))
        model = QwenImageTransformer2DModel.from_single_file(
            str(path), config=tmp, subfolder="transformer", local_files_only=True, torch_dtype=dtype,
            quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
        )
    # the reader's tensors live in the file's memory map (32-byte aligned): fresh storage, as for safetensors
    return realign(model.to(device)).eval()
