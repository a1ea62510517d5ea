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

Writes ``transformer.safetensors`` / ``vae.safetensors`` (float16),
``trained.json`` (latents_mean / latents_std, the text encoder's checksum) and ``record.json`` (config, data seed, steps, loss curves, git commit) into ``out``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from workbench.training import world

T2I_COLUMNS = 4  # caption ids kept per image: short, long, Chinese, long with "center" (or long again)


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


# ----------------------------------------------------------------------------- helpers
def run_configs(cfg: TrainConfig):
    """The inference configs the training must match: model sizes, t2i / edit templates, sampler, reference."""
    from workbench.config.compose import compose, to_run_config

    run = to_run_config(compose(cfg.run_overrides))
    edit = to_run_config(compose(cfg.edit_overrides))
    # the frozen text encoder is built as for trained weights (explicit, transformers-independent init);
    # the transformer and VAE start from their seeded init
    run.model.weights = edit.model.weights = "training"
    return run, edit


def git_commit() -> str:
    if os.environ.get("WORKBENCH_COMMIT"):
        return os.environ["WORKBENCH_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def t2i_scenes(cfg: TrainConfig) -> list[world.Scene]:
    rng = np.random.default_rng(cfg.data_seed)
    return [world.random_scene(rng, held_out=False) for _ in range(cfg.data.images)]


def edit_pairs(cfg: TrainConfig) -> list[world.EditPair]:
    rng = np.random.default_rng(cfg.data_seed + 1)
    return [world.random_edit(rng, held_out=False) for _ in range(cfg.data.edit_pairs)]


def scene_captions(s: world.Scene) -> list[str]:
    centre = world.caption_long(s, "center") if s.position == "centre" else world.caption_long(s)
    return [world.caption_short(s), world.caption_long(s), world.caption_zh(s), centre]


def images_tensor(scenes: list[world.Scene]) -> torch.Tensor:
    """(N, 3, 1, 64, 64) in [-1, 1], rendered in parallel (PIL drawing is the slow part)."""
    from concurrent.futures import ProcessPoolExecutor

    workers = min(16, os.cpu_count() or 1)
    if len(scenes) < 2000 or workers == 1:
        arrays = [np.asarray(world.render(s)) for s in scenes]
    else:
        with ProcessPoolExecutor(workers) as pool:
            arrays = list(pool.map(_render_array, scenes, chunksize=256))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x[:, :, None]


def _render_array(s: world.Scene) -> np.ndarray:
    return np.asarray(world.render(s))


def _pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(r.shape[0] for r in rows)
    embeds = torch.zeros(len(rows), length, rows[0].shape[1], dtype=torch.float16)
    lengths = torch.tensor([r.shape[0] for r in rows])
    for i, r in enumerate(rows):
        embeds[i, : r.shape[0]] = r.half()
    return embeds, lengths


# ----------------------------------------------------------------------------- stage 1
@torch.no_grad()
def precompute(cfg: TrainConfig, path: Path) -> None:
    """Encode every caption (t2i) and every edit pair once with the frozen seeded text encoder."""
    from workbench.models import tiny
    from workbench.stages import latents as latents_stage
    from workbench.stages.encode import encode_prompts
    from workbench.stages.reference import reference_sizes
    from workbench.tokenizer import load_tokenizer

    run, edit = run_configs(cfg)
    tokenizer = load_tokenizer()
    encoder = tiny.build_text_encoder(run.model)
    # every caption the training scenes can be given (the whole grammar bar the held-out pairs, for 40k images)
    captions = ["", " "] + sorted({c for s in t2i_scenes(cfg) for c in scene_captions(s)})
    rows = []
    for start in range(0, len(captions), 256):
        c = encode_prompts(tokenizer, encoder, run.template, captions[start : start + 256])
        rows += [c.embeds[i, c.mask[i]] for i in range(len(c))]
    t2i, t2i_len = _pad(rows)

    rows = []
    for pair in edit_pairs(cfg):
        img = world.render(pair.source)
        plan = reference_sizes(img.width, img.height, edit.reference)
        vlm = latents_stage.resize(img, *plan.vlm, plan.resize_filter)
        c = encode_prompts(tokenizer, encoder, edit.template, [pair.instruction], [vlm],
                           resample=getattr(edit.reference.vlm_resample, "value", edit.reference.vlm_resample))
        rows.append(c.embeds[0, c.mask[0]])
    edits, edit_len = _pad(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"captions": captions, "t2i": t2i, "t2i_len": t2i_len, "edit": edits, "edit_len": edit_len,
                "data_seed": cfg.data_seed, "edit_pairs": cfg.data.edit_pairs,
                "text_encoder_seed": run.model.seed}, path)
    print(f"precompute: {len(captions)} captions, {len(rows)} edit pairs -> {path}", flush=True)


# ----------------------------------------------------------------------------- stage 2
def train_vae(cfg: TrainConfig, out: Path, device: torch.device, record: dict) -> None:
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
        progress = _progress(step, cfg.vae.steps, t0, cfg.vae.max_seconds)
        if progress >= 1.0 and step < cfg.vae.steps:
            print(f"vae: time limit after {step - 1} steps", flush=True)
            step -= 1
            break
        lr = cfg.vae.lr * min(1.0, step / 100) * 0.5 * (1 + math.cos(math.pi * progress))
        for g in opt.param_groups:
            g["lr"] = lr
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
    vae.eval()
    with torch.no_grad():  # per-channel statistics of the latents (the distribution's mean), as the real VAE has
        z = torch.cat([vae.encode(data[i : i + 256]).latent_dist.mode() for i in range(0, min(n, cfg.vae.stats_images), 256)])
        mean = z.mean(dim=(0, 2, 3, 4)).tolist()
        std = z.std(dim=(0, 2, 3, 4)).tolist()
    vae.register_to_config(latents_mean=mean, latents_std=std)
    save_file({k: v.detach().half().cpu().contiguous() for k, v in vae.state_dict().items()}, str(out / "vae.safetensors"))
    info = {"latents_mean": mean, "latents_std": std, "text_encoder_checksum": encoder_checksum(run.model)}
    (out / "trained.json").write_text(json.dumps(info, indent=1))
    record["vae"] = {"steps": step, "seconds": round(time.time() - t0, 1), "curve": _thin(curve),
                     "final_reconstruction": float(np.mean(curve[-100:]))}


def encoder_checksum(model_cfg) -> float:
    from workbench.models import tiny

    return tiny.text_encoder_checksum(tiny.build_text_encoder(model_cfg))


def _progress(step: int, steps: int, t0: float, max_seconds: float) -> float:
    """Fraction of the schedule done: by steps, or by time when a time limit is set (whichever is further)."""
    return max(step / steps, (time.time() - t0) / max_seconds if max_seconds else 0.0)


def _thin(curve: list[float], every: int = 100) -> list[float]:
    return [round(float(np.mean(curve[i : i + every])), 5) for i in range(0, len(curve), every)]


def load_trained_vae(run, out: Path, device):
    from workbench.models import tiny

    model = run.model
    info = json.loads((out / "trained.json").read_text())
    vae = tiny.build_vae(model, {k: info[k] for k in ("latents_mean", "latents_std")})
    from safetensors.torch import load_file

    vae.load_state_dict({k: v.float() for k, v in load_file(str(out / "vae.safetensors")).items()})
    return vae.to(device).eval()


# ----------------------------------------------------------------------------- stage 3
def train_dit(cfg: TrainConfig, out: Path, device: torch.device, record: dict) -> None:
    from safetensors.torch import load_file, save_file

    from workbench.models import tiny
    from workbench.stages.latents import normalise, pack
    from workbench.stages.schedule import calculate_mu

    run, edit = run_configs(cfg)
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
    scenes = t2i_scenes(cfg)
    x_t2i = encode(images_tensor(scenes))
    cap_ids = torch.tensor([[index[c] for c in scene_captions(s)] for s in scenes], device=device)
    pairs = edit_pairs(cfg)
    x_src = encode(images_tensor([p.source for p in pairs]))
    x_tgt = encode(images_tensor([p.target for p in pairs]))
    print(f"dit data: {len(scenes)} images, {len(pairs)} pairs encoded in {time.time() - t0:.0f}s", flush=True)
    t2i_emb, t2i_len = conds["t2i"].to(device).float(), conds["t2i_len"].to(device)
    edit_emb, edit_len = conds["edit"].to(device).float(), conds["edit_len"].to(device)
    empty_ids = torch.tensor([index[""], index[" "]], device=device)

    torch.manual_seed(cfg.seed + 1)
    model = tiny.build_transformer(run.model)
    if cfg.dit.init_from:
        model.load_state_dict({k: v.float() for k, v in load_file(str(Path(cfg.dit.init_from) / "transformer.safetensors")).items()})
    model = model.to(device).train()
    ema_keys = [k for k, v in model.state_dict().items() if v.is_floating_point()]
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    live = [model.state_dict()[k] for k in ema_keys]
    shadow = [ema[k] for k in ema_keys]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.dit.lr, weight_decay=0.01, betas=(0.9, 0.99))
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 2)
    tokens = x_t2i.shape[1]
    side = int(math.isqrt(tokens))
    mu = calculate_mu(tokens, run.sampler)  # the inference schedule's shift at the training size

    def shifted_sigmas(b: int) -> torch.Tensor:
        u = torch.rand(b, generator=gen, device=device).clamp(1e-3, 1.0)
        return math.exp(mu) / (math.exp(mu) + (1 / u - 1))  # exponential time shift, as FlowMatchEuler

    def batch_text(emb, lengths, ids):
        length = int(lengths[ids].max())
        e = emb[ids, :length]
        mask = torch.arange(length, device=device)[None] < lengths[ids][:, None]
        return e, mask

    curve_t2i, curve_edit, step = [], [], 0
    t0 = time.time()
    for step in range(1, cfg.dit.steps + 1):
        progress = _progress(step, cfg.dit.steps, t0, cfg.dit.max_seconds)
        if progress >= 1.0 and step < cfg.dit.steps:
            print(f"dit: time limit after {step - 1} steps", flush=True)
            step -= 1
            break
        lr = cfg.dit.lr * min(1.0, step / cfg.dit.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for g in opt.param_groups:
            g["lr"] = lr
        b = cfg.dit.batch
        is_edit = cfg.dit.edit_every > 0 and step % cfg.dit.edit_every == 0
        if is_edit:
            ids = torch.randint(0, len(pairs), (b,), generator=gen, device=device)
            x0, ref = x_tgt[ids], x_src[ids]
            emb, mask = batch_text(edit_emb, edit_len, ids)
            shapes = [[(1, side, side), (1, side, side)]] * b
        else:
            ids = torch.randint(0, len(scenes), (b,), generator=gen, device=device)
            col = torch.multinomial(torch.tensor([cfg.data.p_short, 1 - cfg.data.p_short - cfg.data.p_zh - 0.1, cfg.data.p_zh, 0.1],
                                                 device=device), b, replacement=True, generator=gen)
            cid = cap_ids[ids, col]
            drop = torch.rand(b, generator=gen, device=device) < cfg.dit.p_drop
            cid = torch.where(drop, empty_ids[torch.randint(0, 2, (b,), generator=gen, device=device)], cid)
            x0, ref = x_t2i[ids], None
            emb, mask = batch_text(t2i_emb, t2i_len, cid)
            shapes = [[(1, side, side)]] * b
        noise = torch.randn(x0.shape, generator=gen, device=device)
        sigma = shifted_sigmas(b)
        xs = sigma[:, None, None] * noise + (1 - sigma[:, None, None]) * x0
        inp = xs if ref is None else torch.cat([xs, ref], dim=1)
        pred = model(hidden_states=inp, timestep=sigma, encoder_hidden_states=emb, encoder_hidden_states_mask=mask,
                     img_shapes=shapes, return_dict=False)[0][:, :tokens]
        loss = ((pred - (noise - x0)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(shadow, live, 1 - min(cfg.dit.ema, (1 + step) / (10 + step)))
        (curve_edit if is_edit else curve_t2i).append(float(loss.detach()))
        if step % 500 == 0 or step == cfg.dit.steps:
            print(f"dit step {step} t2i {np.mean(curve_t2i[-300:]):.4f} edit {np.mean(curve_edit[-150:] or [0]):.4f} "
                  f"lr {lr:.2e} {time.time() - t0:.0f}s", flush=True)
    save_file({k: v.detach().half().cpu().contiguous() for k, v in ema.items()}, str(out / "transformer.safetensors"))
    if "dit" in record:  # a continued run (dit.init_from): keep the earlier stage's numbers
        record.setdefault("dit_earlier", []).append(record.pop("dit"))
    record["dit"] = {"init_from": cfg.dit.init_from, "batch": cfg.dit.batch, "steps": step, "seconds": round(time.time() - t0, 1), "curve_t2i": _thin(curve_t2i),
                     "curve_edit": _thin(curve_edit, 50), "mu": mu, "images": len(scenes), "edit_pairs": len(pairs)}


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
    """conf/train_tiny.yaml with Hydra overrides (``key=value``), typed by ``TrainConfig``."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from workbench.config.compose import compose

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    return OmegaConf.to_object(compose(list(overrides), config_name="train_tiny"))


def main(argv: Optional[list[str]] = None) -> None:
    import sys

    out = train(load_config(sys.argv[1:] if argv is None else argv))
    print(f"trained weights and record in {out}")


if __name__ == "__main__":
    main()
