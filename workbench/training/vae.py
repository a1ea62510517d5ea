"""Stage 2: ``AutoencoderKLQwenImage`` trained as an autoencoder on world images, then its latents'
per-channel ``latents_mean`` / ``latents_std`` measured and stored (``trained.json``)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from workbench.training import world
from workbench.training.config import TrainConfig, run_configs
from workbench.training.data import images_tensor
from workbench.training.loop import progress, set_lr, thin


def train_vae(cfg: TrainConfig, out: Path, device: torch.device, record: dict) -> None:
    """L1 + MSE reconstruction + a small KL; writes vae.safetensors (float16) and trained.json."""
    from safetensors.torch import save_file

    from workbench.models import tiny

    run, _ = run_configs(cfg)
    torch.manual_seed(cfg.seed)
    vae = tiny.build_vae(run.model).to(device).train()
    rng = np.random.default_rng(cfg.data_seed + 2)
    n = cfg.vae.images
    data = images_tensor([world.random_scene(rng, held_out=None) for _ in range(n)]).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae.lr, weight_decay=0.0)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    curve, t0, step = [], time.time(), 0
    for step in range(1, cfg.vae.steps + 1):
        done = progress(step, cfg.vae.steps, t0, cfg.vae.max_seconds)
        if done >= 1.0 and step < cfg.vae.steps:
            print(f"vae: time limit after {step - 1} steps", flush=True)
            step -= 1
            break
        set_lr(opt, cfg.vae.lr * min(1.0, step / 100) * 0.5 * (1 + math.cos(math.pi * done)))
        x = data[torch.randint(0, n, (cfg.vae.batch,), generator=gen).to(device)]
        posterior = vae.encode(x).latent_dist
        y = vae.decode(posterior.sample()).sample
        rec = (y - x).abs().mean() + ((y - x) ** 2).mean()
        loss = rec + cfg.vae.kl * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        curve.append(float(rec.detach()))
        if step % 200 == 0 or step == cfg.vae.steps:
            print(f"vae step {step} rec {np.mean(curve[-200:]):.4f} {time.time() - t0:.0f}s", flush=True)
    mean, std = _latents_statistics(vae.eval(), data, min(n, cfg.vae.stats_images))
    vae.register_to_config(latents_mean=mean, latents_std=std)
    save_file({k: v.detach().half().cpu().contiguous() for k, v in vae.state_dict().items()}, str(out / "vae.safetensors"))
    info = {"latents_mean": mean, "latents_std": std, "text_encoder_checksum": encoder_checksum(run.model)}
    (out / "trained.json").write_text(json.dumps(info, indent=1))
    record["vae"] = {"steps": step, "seconds": round(time.time() - t0, 1), "curve": thin(curve),
                     "final_reconstruction": float(np.mean(curve[-100:]))}


@torch.no_grad()
def _latents_statistics(vae, images: torch.Tensor, count: int) -> tuple[list[float], list[float]]:
    """Per-channel mean / std of the posterior means of the first ``count`` images, in batches of 256
    (the last batch may run past ``count``), as the real VAE's config holds them."""
    z = torch.cat([vae.encode(images[i : i + 256]).latent_dist.mode() for i in range(0, count, 256)])
    return z.mean(dim=(0, 2, 3, 4)).tolist(), z.std(dim=(0, 2, 3, 4)).tolist()


def encoder_checksum(model_cfg) -> float:
    from workbench.models import tiny

    return tiny.text_encoder_checksum(tiny.build_text_encoder(model_cfg))


def load_trained_vae(run, out: Path, device):
    """The VAE stage 2 wrote into ``out``, with its latents statistics, in float32 for encoding."""
    from safetensors.torch import load_file

    from workbench.models import tiny

    info = json.loads((out / "trained.json").read_text())
    vae = tiny.build_vae(run.model, {k: info[k] for k in ("latents_mean", "latents_std")})
    vae.load_state_dict({k: v.float() for k, v in load_file(str(out / "vae.safetensors")).items()})
    return vae.to(device).eval()
