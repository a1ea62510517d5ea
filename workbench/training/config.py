"""The training's typed config (``conf/train_tiny.yaml``) and the inference configs it must match."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class DataConfig:
    images: int = 40000  # t2i training images rendered from data_seed
    edit_pairs: int = 4000  # edit pairs (their conditionings depend on the source image)
    p_short: float = 0.3  # caption form probabilities (the rest: the long form)
    p_zh: float = 0.15


@dataclass
class VaeTrainConfig:
    steps: int = 3000
    batch: int = 64
    lr: float = 1e-3
    kl: float = 1e-6
    images: int = 8192  # training images (any scene, held-out pairs too: the VAE learns pixels, not words)
    stats_images: int = 4096  # images whose latents give latents_mean / latents_std
    max_seconds: float = 0.0  # 0 = no limit; else the schedule runs on max(step/steps, time/max_seconds)


@dataclass
class DitTrainConfig:
    steps: int = 20000
    batch: int = 256
    lr: float = 5e-4
    warmup: int = 500
    ema: float = 0.999
    p_drop: float = 0.1  # caption -> "" or " " (CFG's unconditional)
    edit_every: int = 3  # every n-th step is an edit batch
    max_seconds: float = 0.0  # 0 = no limit; else the schedule runs on max(step/steps, time/max_seconds)
    init_from: Optional[str] = None  # a folder with transformer.safetensors: continue from it


@dataclass
class TrainConfig:
    out: str = "tiny_trained"
    seed: int = 0  # training randomness (noise, sigmas, batches)
    data_seed: int = 1000  # the world's scenes; evaluations use other seeds
    device: str = "auto"
    stage: str = "all"  # precompute | vae | dit | all
    run_overrides: list[str] = field(default_factory=lambda: ["model=tiny"])  # model sizes, templates, sampler
    edit_overrides: list[str] = field(default_factory=lambda: ["model=tiny", "experiment=edit_tiny"])
    conditionings: Optional[str] = None  # default: <out>/conditionings.pt
    data: DataConfig = field(default_factory=DataConfig)
    vae: VaeTrainConfig = field(default_factory=VaeTrainConfig)
    dit: DitTrainConfig = field(default_factory=DitTrainConfig)


def run_configs(cfg: TrainConfig):
    """The inference configs the training must match: model sizes, t2i / edit templates, sampler, reference."""
    from workbench.config.build import compose, to_run_config

    run = to_run_config(compose(cfg.run_overrides))
    edit = to_run_config(compose(cfg.edit_overrides))
    # the frozen text encoder is built as for trained weights (explicit, transformers-independent init);
    # the transformer and VAE start from their seeded init
    run.model.weights = edit.model.weights = "training"
    return run, edit
