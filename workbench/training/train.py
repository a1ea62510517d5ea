"""Train the embedded tiny model (``model=tiny``) on the synthetic world: one command, Hydra config.

    python -m workbench.training.train                      # conf/train_tiny.yaml, everything
    python -m workbench.training.train stage=precompute     # only the frozen text conditionings (CPU)
    python -m workbench.training.train device=cpu vae.steps=2 dit.steps=2 data.images=64   # smoke test

Stages (each skipped when its output is already in ``out``, so a second call resumes):
1. precompute: the text encoder is FROZEN (the seeded random Qwen2.5-VL of ``model.seed``, regenerated
   at load time, never shipped: its 152064 x 64 embedding alone would be 19 MB in bf16). Every caption
   of the grammar (t2i template, prefix dropped as at inference) and every edit pair (edit template,
   source image through the vision tower) is encoded once into ``conditionings.pt``.
2. vae: ``AutoencoderKLQwenImage`` trained as an autoencoder (L1 + MSE + a small KL) on world images;
   then per-channel ``latents_mean`` / ``latents_std`` of the data's latents go into its config.
3. dit: ``QwenImageTransformer2DModel`` with Qwen-Image's flow matching: x_s = s * noise + (1 - s) * x0,
   target v = noise - x0, timestep = s, s drawn uniformly and shifted with the inference schedule's mu
   for the training size; captions dropped to "" / " " for CFG; edit pairs with the packed source
   latents appended as reference tokens (RoPE frame 1), loss on the target tokens only. EMA weights ship.

Writes ``transformer.safetensors`` / ``vae.safetensors`` (float16), ``trained.json`` (latents_mean /
latents_std, the text encoder's checksum) and ``record.json`` (config, data seed, steps, loss curves,
git commit) into ``out``. One module per stage: ``precompute``, ``vae``, ``dit``; the data from the
world in ``data``; the config in ``config``.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from workbench.training import world
from workbench.training.config import TrainConfig
from workbench.training.dit import train_dit
from workbench.training.precompute import precompute
from workbench.training.vae import train_vae


def git_commit() -> str:
    if os.environ.get("WORKBENCH_COMMIT"):
        return os.environ["WORKBENCH_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ----------------------------------------------------------------------------- entry point
def train(cfg: TrainConfig) -> Path:
    from workbench.models.components import resolve_device

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed 64x64 shapes: pick the fastest conv kernels once
    record_path = out / "record.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record.update({"config": asdict(cfg), "data_seed": cfg.data_seed, "git_commit": git_commit(),
                   "held_out": sorted(map(list, world.HELD_OUT)), "torch": torch.__version__, "device": str(device)})
    conds = Path(cfg.conditionings) if cfg.conditionings else out / "conditionings.pt"
    if cfg.stage in ("precompute", "all") and not conds.is_file():
        precompute(cfg, conds)
    if cfg.stage in ("vae", "all") and not (out / "vae.safetensors").is_file():
        train_vae(cfg, out, device, record)
        record_path.write_text(json.dumps(record, indent=1))
    if cfg.stage in ("dit", "all") and not (out / "transformer.safetensors").is_file():
        train_dit(cfg, out, device, record)
    record_path.write_text(json.dumps(record, indent=1))
    return out


def load_config(overrides: list[str] = ()) -> TrainConfig:
    """conf/train_tiny.yaml with Hydra overrides (``key=value``), typed by ``TrainConfig``.

    Composed by the workbench's one door (``workbench.config.build``); the values are then merged
    onto ``TrainConfig`` (a key it lacks or a value of the wrong type is refused, naming the key)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from workbench.config.build import compose
    from workbench.errors import InputError

    composed = compose(list(overrides), config_name="train_tiny")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), composed))
    except OmegaConfBaseException as err:
        key = f" (key {err.full_key})" if getattr(err, "full_key", None) else ""
        raise InputError(f"train_tiny: {str(err).splitlines()[0]}{key}; keys: workbench/training/config.py") from None


def main(argv: Optional[list[str]] = None) -> None:
    import sys

    out = train(load_config(sys.argv[1:] if argv is None else argv))
    print(f"trained weights and record in {out}")


if __name__ == "__main__":
    main()
