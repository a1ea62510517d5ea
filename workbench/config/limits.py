"""Config-time limits and checks that need the machine or the file system (devices, free memory,
image files, key spelling), shared by the config dataclasses, the build step and the pipeline.

Imports nothing heavy at module level (torch and PIL inside the functions that need them).

Every limit is documented here and named, with the value found, in the error it raises; all of them
run when a config is validated (``to_run_config``), before any model loads.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import warnings
from pathlib import Path
from typing import Iterable

from workbench.errors import ConfigError

# ----------------------------------------------------------------------------- documented limits
MAX_SIDE = 8192  # pixels per side of the output image (latent 1024, 512 patches of 16)
MAX_PIXELS = 4096 * 4096  # pixels per image (65,536 image tokens per forward)
MAX_LAYERS = 16  # Qwen-Image-Layered layers (the sequence grows by one image per layer)
MAX_STEPS = 1000  # sampler.steps (ComfyUI's KSampler allows 10000; nothing useful needs > 1000)
MAX_BATCH = 64  # batch_size: images per forward pass
MAX_IMAGES = 1024  # len(prompts) x len(seeds): images per run
MAX_PROMPT_CHARS = 20_000  # characters per prompt (the token limit is max_sequence_length, noted on truncation)
MAX_CFG = 100.0  # sampler.cfg (ComfyUI's KSampler limit)
SEED_RANGE = (0, 2**64 - 1)  # torch.Generator.manual_seed accepts 0 .. 2**64-1
DEVICES = "auto, cpu, cuda, cuda:N, mps"

ASSETS = Path(__file__).resolve().parents[1] / "assets"  # files shipped with the package, named asset:NAME


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"


# ----------------------------------------------------------------------------- numbers
def check_finite_fields(obj, prefix: str, allowed: dict[str, str], error=ConfigError) -> None:
    """Refuse NaN / Inf in every float field of a dataclass (a NaN passes ``<`` / ``>`` checks silently
    and ends up as bare ``NaN`` in record.json); ``allowed`` names the valid range per field."""
    import dataclasses

    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            rng = allowed.get(f.name, "a finite number")
            raise error(f"{prefix}{f.name}={value} is not a finite number; expected {rng}")


# ----------------------------------------------------------------------------- unknown keys
def suggest(key: str, known: Iterable[str]) -> str:
    """``; did you mean X?`` for the closest known name, else the list of known names."""
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"did you mean {close[0]}?" if close else f"known keys: {', '.join(known)}"


def unknown_key_message(path: str, key: str, known: Iterable[str]) -> str:
    """``unknown key sampler.stepz; did you mean sampler.steps?``"""
    full = f"{path}.{key}" if path else key
    hint = suggest(key, known)
    if hint.startswith("did you mean "):
        best = hint.removeprefix("did you mean ").rstrip("?")
        hint = f"did you mean {path + '.' if path else ''}{best}?"
    return f"unknown key {full}; {hint}"


# ----------------------------------------------------------------------------- devices
def machine_devices() -> list[str]:
    """The devices this machine offers, e.g. ``['cpu', 'cuda:0', 'cuda:1']``."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def check_device(device: str, error=ConfigError) -> None:
    """``device`` must be one of auto | cpu | cuda | cuda:N | mps, and present on this machine."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise error(f"device={device!r} is not a device the workbench runs on; allowed: {DEVICES} "
                    f"(this machine has: {', '.join(machine_devices())})")
    if device in ("auto", "cpu"):
        return
    have = machine_devices()
    if device == "cuda" and any(d.startswith("cuda:") for d in have):
        return
    if device in have:
        return
    raise error(f"device={device} but this machine has no such device (it has: {', '.join(have)}); "
                f"allowed: {DEVICES}. Use device=auto (a GPU when there is one) or device=cpu")


# ----------------------------------------------------------------------------- memory
# Real Qwen-Image sizes, used for model.source=files (the tiny / random_full models give their own)
REAL_HIDDEN = 3072
REAL_LAYERS = 60  # Qwen-Image's transformer blocks
REAL_VAE_BASE_DIM = 96


def estimate_bytes(batch: int, height: int, width: int, *, hidden: int = REAL_HIDDEN,
                   vae_base_dim: int = REAL_VAE_BASE_DIM, transformer_bytes: int = 2, vae_bytes: int = 4,
                   cfg_batch: int = 1) -> int:
    """A lower-bound estimate of the memory one forward batch needs besides the weights.

    - VAE decode: the last decoder stage runs at full resolution with ``vae_base_dim`` channels and
      holds about four such tensors at once (input, two convolutions, the norm): by far the peak;
    - transformer: image tokens (one per 16x16 pixels) x the MLP's 4x hidden width, twice for CFG;
    - latents: 16 channels at 1/8 resolution in float32 (noise, prediction, result).
    """
    pixels = height * width
    vae = batch * pixels * vae_base_dim * 4 * vae_bytes
    tokens = pixels // 256
    transformer = batch * cfg_batch * tokens * hidden * 4 * 2 * transformer_bytes
    latents = batch * 16 * (pixels // 64) * 4 * 3
    return vae + transformer + latents


def available_memory(device: str) -> tuple[int, str]:
    """Free bytes on ``device`` (resolved: ``auto`` -> cuda when available) and a label for messages.

    CUDA: ``torch.cuda.mem_get_info`` (free memory of that GPU) plus what torch's caching allocator holds
    reserved but unused (this process reuses it: after ``free_models()`` the driver may not have it back yet);
    CPU / MPS: psutil's available RAM, else ``os.sysconf`` free pages."""
    if device != "cpu" and device != "mps":
        import torch

        if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
            index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
            free, _total = torch.cuda.mem_get_info(index)
            cached = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
            return int(free + cached), f"cuda:{index}"
    try:
        import psutil

        return int(psutil.virtual_memory().available), "CPU RAM"
    except ImportError:  # psutil is optional
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")), "CPU RAM"


def check_memory(estimate: int, device: str, what: str, error=ConfigError,
                 fix: str = "lower height/width or batch_size") -> None:
    """Refuse a size whose activations alone cannot fit the free memory of the run's device."""
    free, where = available_memory(device)
    if estimate > free:
        raise error(f"{what} needs about {fmt_bytes(estimate)} for latents and activations (VAE decode at full "
                    f"resolution) besides the weights, more than the {fmt_bytes(free)} free on {where}; {fix}")


# ----------------------------------------------------------------------------- image files
def resolve_asset(path: str) -> Path:
    """The one rule for file names in configs: ``asset:NAME`` is ``workbench/assets/NAME`` (images and
    trained weights shipped with the package); anything else is a path (``~`` expanded)."""
    return ASSETS / path.removeprefix("asset:") if path.startswith("asset:") else Path(path).expanduser()


def open_image(path: str, key: str, *, decode: bool, error=ConfigError, mode: str = "RGB"):
    """Open ``path`` as an image given by config key ``key``; one-line ``error`` naming both otherwise.

    ``decode=False`` (config time) reads the header and verifies the file's structure (PNG chunk CRCs)
    without decoding pixels; ``decode=True`` returns the image in ``mode`` (RGB; RGBA keeps the file's
    transparency, opaque where it has none). Images over PIL's decompression-bomb limit
    (``Image.MAX_IMAGE_PIXELS``, left as PIL sets it) are refused, not decoded.
    """
    from PIL import Image, UnidentifiedImageError

    file = resolve_asset(path)
    where = f"{key} {path!r}"
    if not file.exists():
        raise error(f"{where}: file not found (looked at {file}); give the path of a PNG / JPEG / WebP image")
    if not file.is_file():
        raise error(f"{where}: {file} is not a file; give the path of a PNG / JPEG / WebP image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse, never raise the limit
            with Image.open(file) as img:
                if not decode:
                    img.verify()
                    return None
                img.load()
                return img.convert(mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise error(f"{where}: the image is too large to decode safely ({err}); downscale it below "
                    f"{Image.MAX_IMAGE_PIXELS} pixels") from None
    except UnidentifiedImageError:
        raise error(f"{where}: not an image file PIL can read; give a PNG / JPEG / WebP image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # truncated / corrupt data
        raise error(f"{where}: the image file is damaged or truncated ({err}); re-export or replace it") from None
