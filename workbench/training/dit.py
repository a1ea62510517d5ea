"""Stage 3: ``QwenImageTransformer2DModel`` trained with Qwen-Image's flow matching on the world.

x_s = s * noise + (1 - s) * x0, target v = noise - x0, timestep = s; s drawn uniformly and shifted with
the inference schedule's mu for the training size. Captions are dropped to "" / " " for CFG; every
``edit_every``-th batch is edit pairs, with the packed source latents appended as reference tokens
(RoPE frame 1) and the loss on the target tokens only. EMA weights are what ships.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from workbench.training.config import TrainConfig, run_configs
from workbench.training.data import edit_pairs, images_tensor, scene_captions, t2i_scenes
from workbench.training.loop import progress, set_lr, thin
from workbench.training.vae import load_trained_vae


@dataclass
class DitData:
    """Everything a step draws from, on the training device."""

    x_t2i: torch.Tensor  # (images, 16, 64) packed normalised latents
    cap_ids: torch.Tensor  # (images, 4) caption ids (scene_captions' columns) into t2i_emb
    x_src: torch.Tensor  # (pairs, 16, 64) edit sources
    x_tgt: torch.Tensor  # (pairs, 16, 64) edit targets
    t2i_emb: torch.Tensor  # (captions, L, D) padded text conditionings, and their lengths
    t2i_len: torch.Tensor
    edit_emb: torch.Tensor  # (pairs, L, D) edit conditionings (vision tokens included), and their lengths
    edit_len: torch.Tensor
    empty_ids: torch.Tensor  # ids of "" and " ": the dropped captions

    @property
    def side(self) -> int:  # latent tokens per side (64 px / 16)
        return int(math.isqrt(self.x_t2i.shape[1]))


@dataclass
class Batch:
    x0: torch.Tensor  # (b, tokens, 64) clean target latents
    ref: Optional[torch.Tensor]  # (b, tokens, 64) edit source latents, None for t2i
    emb: torch.Tensor  # (b, L, D)
    mask: torch.Tensor  # (b, L) bool
    shapes: list
    is_edit: bool


def train_dit(cfg: TrainConfig, out: Path, device: torch.device, record: dict) -> None:
    """Train, write transformer.safetensors (EMA weights, float16) and the stage's record entry."""
    from safetensors.torch import save_file

    from workbench.stages.schedule import calculate_mu

    run, _ = run_configs(cfg)
    data = prepare_data(cfg, run, out, device)
    model, ema = build_model(cfg, run, device)
    mu = calculate_mu(data.x_t2i.shape[1], run.sampler)  # the inference schedule's shift at the training size
    t0 = time.time()
    step, curve_t2i, curve_edit = train_loop(cfg, model, ema, data, mu, device)
    save_file({k: v.detach().half().cpu().contiguous() for k, v in ema.items()}, str(out / "transformer.safetensors"))
    if "dit" in record:  # a continued run (dit.init_from): keep the earlier stage's numbers
        record.setdefault("dit_earlier", []).append(record.pop("dit"))
    record["dit"] = {"init_from": cfg.dit.init_from, "batch": cfg.dit.batch, "steps": step,
                     "seconds": round(time.time() - t0, 1), "curve_t2i": thin(curve_t2i),
                     "curve_edit": thin(curve_edit, 50), "mu": mu, "images": len(data.x_t2i),
                     "edit_pairs": len(data.x_src)}


def prepare_data(cfg: TrainConfig, run, out: Path, device: torch.device) -> DitData:
    """The world's images and pairs through the trained VAE, and the precomputed conditionings."""
    from workbench.stages.latents import normalise, pack

    conds = torch.load(cfg.conditionings or out / "conditionings.pt")
    if conds["data_seed"] != cfg.data_seed or conds["edit_pairs"] != cfg.data.edit_pairs:
        raise ValueError("conditionings.pt was made for another data_seed / edit_pairs: delete it to recompute")
    index = {c: i for i, c in enumerate(conds["captions"])}
    vae = load_trained_vae(run, out, device)

    @torch.no_grad()
    def encode(images: torch.Tensor) -> torch.Tensor:  # (N, 3, 1, 64, 64) -> packed normalised (N, 16, 64)
        rows = []
        for i in range(0, len(images), 512):
            z = vae.encode(images[i : i + 512].to(device)).latent_dist.mode()
            rows.append(pack(normalise(z, vae)[:, :, 0]))
        return torch.cat(rows)

    t0 = time.time()
    scenes, pairs = t2i_scenes(cfg), edit_pairs(cfg)
    data = DitData(
        x_t2i=encode(images_tensor(scenes)),
        cap_ids=torch.tensor([[index[c] for c in scene_captions(s)] for s in scenes], device=device),
        x_src=encode(images_tensor([p.source for p in pairs])),
        x_tgt=encode(images_tensor([p.target for p in pairs])),
        t2i_emb=conds["t2i"].to(device).float(), t2i_len=conds["t2i_len"].to(device),
        edit_emb=conds["edit"].to(device).float(), edit_len=conds["edit_len"].to(device),
        empty_ids=torch.tensor([index[""], index[" "]], device=device),
    )
    print(f"dit data: {len(scenes)} images, {len(pairs)} pairs encoded in {time.time() - t0:.0f}s", flush=True)
    return data


def build_model(cfg: TrainConfig, run, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The seeded transformer (or ``dit.init_from``'s weights) in training mode, and its EMA copy."""
    from safetensors.torch import load_file

    from workbench.models import tiny

    torch.manual_seed(cfg.seed + 1)
    model = tiny.build_transformer(run.model)
    if cfg.dit.init_from:
        weights = load_file(str(Path(cfg.dit.init_from) / "transformer.safetensors"))
        model.load_state_dict({k: v.float() for k, v in weights.items()})
    model = model.to(device).train()
    return model, {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_loop(cfg: TrainConfig, model, ema: dict, data: DitData, mu: float, device: torch.device):
    """AdamW with warmup and cosine decay to 10 %; returns (steps done, t2i loss curve, edit loss curve)."""
    ema_keys = [k for k, v in model.state_dict().items() if v.is_floating_point()]
    live = [model.state_dict()[k] for k in ema_keys]
    shadow = [ema[k] for k in ema_keys]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.dit.lr, weight_decay=0.01, betas=(0.9, 0.99))
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 2)
    curve_t2i, curve_edit, step, t0 = [], [], 0, time.time()
    for step in range(1, cfg.dit.steps + 1):
        done = progress(step, cfg.dit.steps, t0, cfg.dit.max_seconds)
        if done >= 1.0 and step < cfg.dit.steps:
            print(f"dit: time limit after {step - 1} steps", flush=True)
            step -= 1
            break
        lr = cfg.dit.lr * min(1.0, step / cfg.dit.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))
        set_lr(opt, lr)
        batch = draw_batch(cfg, data, step, gen, device)
        loss = flow_matching_loss(model, batch, mu, gen, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(shadow, live, 1 - min(cfg.dit.ema, (1 + step) / (10 + step)))
        (curve_edit if batch.is_edit else curve_t2i).append(float(loss.detach()))
        if step % 500 == 0 or step == cfg.dit.steps:
            print(f"dit step {step} t2i {np.mean(curve_t2i[-300:]):.4f} edit {np.mean(curve_edit[-150:] or [0]):.4f} "
                  f"lr {lr:.2e} {time.time() - t0:.0f}s", flush=True)
    return step, curve_t2i, curve_edit


def draw_batch(cfg: TrainConfig, data: DitData, step: int, gen: torch.Generator, device: torch.device) -> Batch:
    """Every ``edit_every``-th step an edit batch, else t2i with a drawn caption form and CFG drops.

    The draws from ``gen`` (ids; then caption column, drop, empty caption for t2i) keep their order."""
    b, side = cfg.dit.batch, data.side
    if cfg.dit.edit_every > 0 and step % cfg.dit.edit_every == 0:
        ids = torch.randint(0, len(data.x_src), (b,), generator=gen, device=device)
        emb, mask = _text(data.edit_emb, data.edit_len, ids, device)
        return Batch(data.x_tgt[ids], data.x_src[ids], emb, mask, [[(1, side, side), (1, side, side)]] * b, True)
    ids = torch.randint(0, len(data.x_t2i), (b,), generator=gen, device=device)
    p = cfg.data
    forms = torch.tensor([p.p_short, 1 - p.p_short - p.p_zh - 0.1, p.p_zh, 0.1], device=device)  # scene_captions' columns
    col = torch.multinomial(forms, b, replacement=True, generator=gen)
    cid = data.cap_ids[ids, col]
    drop = torch.rand(b, generator=gen, device=device) < cfg.dit.p_drop
    cid = torch.where(drop, data.empty_ids[torch.randint(0, 2, (b,), generator=gen, device=device)], cid)
    emb, mask = _text(data.t2i_emb, data.t2i_len, cid, device)
    return Batch(data.x_t2i[ids], None, emb, mask, [[(1, side, side)]] * b, False)


def _text(emb: torch.Tensor, lengths: torch.Tensor, ids: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``ids`` cut to their longest length, with the mask of real tokens."""
    length = int(lengths[ids].max())
    mask = torch.arange(length, device=device)[None] < lengths[ids][:, None]
    return emb[ids, :length], mask


def flow_matching_loss(model, batch: Batch, mu: float, gen: torch.Generator, device) -> torch.Tensor:
    """MSE between the predicted and the true velocity (noise - x0) on the target tokens."""
    x0 = batch.x0
    noise = torch.randn(x0.shape, generator=gen, device=device)
    u = torch.rand(x0.shape[0], generator=gen, device=device).clamp(1e-3, 1.0)
    sigma = math.exp(mu) / (math.exp(mu) + (1 / u - 1))  # exponential time shift, as FlowMatchEuler
    xs = sigma[:, None, None] * noise + (1 - sigma[:, None, None]) * x0
    inp = xs if batch.ref is None else torch.cat([xs, batch.ref], dim=1)
    pred = model(hidden_states=inp, timestep=sigma, encoder_hidden_states=batch.emb,
                 encoder_hidden_states_mask=batch.mask, img_shapes=batch.shapes, return_dict=False)[0]
    return ((pred[:, : x0.shape[1]] - (noise - x0)) ** 2).mean()
