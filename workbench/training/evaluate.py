"""Evaluate the trained tiny model on held-out prompts, templates and edits, scored from pixels.

    python -m workbench.training.evaluate [--weights DIR] [--out benchmarks/eval_tiny.json] [--device cpu]

- t2i: 64 prompts of the long caption form from a seed the training never used (``EVAL_SEED``), 48 of
  trained (colour, shape) pairs and 16 of the held-out pairs (reported apart), default sampler;
- template ablation: the same prompts through the official t2i template (the one it was trained with),
  the generic chat template, ``raw`` (no template) and a custom system prompt; plus the Chinese captions;
- edits: 64 held-out "make the <shape> <colour>" pairs through ``experiment=edit_tiny`` (16 whose target
  is a held-out pair); success = the shape has the new colour and the background is kept.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from workbench import metrics
from workbench.training import world

EVAL_SEED = 7777  # scenes (training used data_seed 1000..1002)
CUSTOM_TEMPLATE = {  # a custom system prompt, as a user would write one
    "name": "custom_system",
    "text": "<|im_start|>system\nYou draw simple flat shapes on plain backgrounds.<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n",
    "drop_until": "<|im_start|>user\n",
}


def eval_scenes(n_trained: int = 48, n_held_out: int = 16, seed: int = EVAL_SEED) -> list[world.Scene]:
    rng = np.random.default_rng(seed)
    return [world.random_scene(rng, held_out=False) for _ in range(n_trained)] + [
        world.random_scene(rng, held_out=True) for _ in range(n_held_out)
    ]


def eval_edits(n_trained: int = 48, n_held_out: int = 16, seed: int = EVAL_SEED + 1) -> list[world.EditPair]:
    rng = np.random.default_rng(seed)
    return [world.random_edit(rng, held_out=False) for _ in range(n_trained)] + [
        world.random_edit(rng, held_out=True) for _ in range(n_held_out)
    ]


def generate(bench, overrides: list[str], prompts: list[str], seeds: list[int]) -> list:
    """One image per (prompt, seed) pair, prompts[i] with seeds[i]."""
    from workbench.config.build import compose, to_run_config
    from workbench.config.build import load_template

    out = []
    template = None
    if "template=custom_system" in overrides:
        overrides = [o for o in overrides if o != "template=custom_system"]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "custom_system.yaml"
            import yaml

            path.write_text(yaml.safe_dump(CUSTOM_TEMPLATE))
            template = load_template(path)
    by_seed: dict[int, list[int]] = {}
    for i, s in enumerate(seeds):
        by_seed.setdefault(s, []).append(i)
    images: list = [None] * len(prompts)
    for seed, idx in by_seed.items():
        cfg = to_run_config(compose(overrides + [f"seeds=[{seed}]"]))
        cfg.prompts = [prompts[i] for i in idx]
        cfg.batch_size = 16
        if template is not None:
            cfg.template = template
        for i, result in zip(idx, bench.generate(cfg, progress=False)):
            images[i] = result.image
    out.extend(images)
    return out


SAVED: dict[str, np.ndarray] = {}  # name -> (N, 64, 64, 3) uint8, filled by evaluate() (saved with --images)


def score_set(images, captions: list[str], held: list[bool], name: str = "") -> dict:
    if name:
        SAVED[name] = np.stack([np.asarray(i) for i in images])
    scores = [metrics.score(img, cap) for img, cap in zip(images, captions)]
    trained = [s for s, h in zip(scores, held) if not h]
    held_out = [s for s, h in zip(scores, held) if h]
    return {
        "all": metrics.accuracy(scores),
        "trained_pairs": metrics.accuracy(trained),
        "held_out_pairs": metrics.accuracy(held_out),
        "adherence": metrics.adherence(scores),
    }


def evaluate(weights: Optional[str] = None, device: str = "auto", n: int = 64, seeds_per_prompt: int = 1,
             templates: tuple[str, ...] = ("qwen_t2i", "chat", "raw", "custom_system"), edits: bool = True,
             extra: list[str] = (), steps: Optional[int] = None) -> dict:
    from workbench.config.build import compose, to_run_config
    from workbench.pipeline import Workbench

    base = ["model=tiny", f"device={device}", *extra] + ([f"model.weights={weights}"] if weights else [])
    if steps:
        base.append(f"sampler.steps={steps}")
    bench = Workbench.from_config(to_run_config(compose(base)))
    n_held = n // 4
    scenes = eval_scenes(n - n_held, n_held)
    held = [s.held_out for s in scenes]
    prompts = [world.caption_long(s) for s in scenes]
    seeds = list(range(len(prompts)))
    result: dict = {"weights": weights or "asset:tiny_trained", "eval_seed": EVAL_SEED, "prompts": len(prompts),
                    "held_out_prompts": sum(held), "sampler": to_run_config(compose(base)).sampler.name,
                    "steps": steps or to_run_config(compose(base)).sampler.steps, "templates": {}}
    t0 = time.time()
    for template in templates:
        rows = []
        for k in range(seeds_per_prompt):
            images = generate(bench, base + [f"template={template}"], prompts, [s + 1000 * k for s in seeds])
            rows.append(score_set(images, prompts, held, f"{template}_{k}"))
        result["templates"][template] = rows[0] if seeds_per_prompt == 1 else rows
        print(f"{template}: {rows[0]['all']} adherence {rows[0]['adherence']:.3f} ({time.time() - t0:.0f}s)", flush=True)
    zh = [world.caption_zh(s) for s in scenes]
    result["chinese_qwen_t2i"] = score_set(generate(bench, base + ["template=qwen_t2i"], zh, seeds), zh, held, "chinese")
    print(f"chinese: {result['chinese_qwen_t2i']['all']}", flush=True)
    t2i = result["templates"].get("qwen_t2i")
    if t2i and "raw" in result["templates"] and seeds_per_prompt == 1:
        result["template_margin_t2i_minus_raw"] = t2i["adherence"] - result["templates"]["raw"]["adherence"]
    if edits:
        result["edits"] = evaluate_edits(bench, base, n)
        print(f"edits: {result['edits']}", flush=True)
    result["seconds"] = round(time.time() - t0, 1)
    return result


def evaluate_edits(bench, base: list[str], n: int = 64) -> dict:
    from workbench.config.build import compose, to_run_config

    n_held = n // 4
    pairs = eval_edits(n - n_held, n_held)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, pair in enumerate(pairs):
            src = world.render(pair.source)
            path = Path(tmp) / f"src{i}.png"
            src.save(path)
            cfg = to_run_config(compose(base + ["experiment=edit_tiny", f"images=[{path}]", f"seeds=[{i}]"]))
            cfg.prompts = [pair.instruction]
            edited = bench.generate(cfg, progress=False)[0].image
            SAVED.setdefault("edit_sources", []).append(np.asarray(src))
            SAVED.setdefault("edit_results", []).append(np.asarray(edited))
            s = metrics.score_edit(src, edited, pair.instruction)
            s["success"] = s["colour"] and s["background"]
            s["held_out"] = pair.target.held_out
            rows.append(s)
    return _edit_summary(rows)


def _edit_summary(rows: list[dict]) -> dict:
    keys = ("success", "colour", "background", "shape", "position")

    def mean(rs):
        return {k: float(np.mean([r[k] for r in rs])) for k in keys} if rs else {}

    return {"all": mean(rows), "trained_pairs": mean([r for r in rows if not r["held_out"]]),
            "held_out_targets": mean([r for r in rows if r["held_out"]]), "pairs": len(rows)}


def rescore(images_npz: str, n: int = 64) -> dict:
    """Score the images a previous ``evaluate(..., --images)`` saved, with the current scorer
    (generation is deterministic, so this equals a full re-run when only ``workbench.metrics`` changed)."""
    saved = np.load(images_npz)
    n_held = n // 4
    scenes = eval_scenes(n - n_held, n_held)
    held = [s.held_out for s in scenes]
    english = [world.caption_long(s) for s in scenes]
    out: dict = {"templates": {}}
    for key in saved.files:
        if key.endswith("_0"):
            out["templates"][key[:-2]] = score_set(list(saved[key]), english, held)
    if "chinese" in saved.files:
        out["chinese_qwen_t2i"] = score_set(list(saved["chinese"]), [world.caption_zh(s) for s in scenes], held)
    if "qwen_t2i" in out["templates"] and "raw" in out["templates"]:
        out["template_margin_t2i_minus_raw"] = out["templates"]["qwen_t2i"]["adherence"] - out["templates"]["raw"]["adherence"]
    if "edit_results" in saved.files:
        pairs = eval_edits(n - n_held, n_held)
        rows = []
        for pair, src, edited in zip(pairs, saved["edit_sources"], saved["edit_results"]):
            r = metrics.score_edit(src, edited, pair.instruction)
            r["success"] = r["colour"] and r["background"]
            r["held_out"] = pair.target.held_out
            rows.append(r)
        out["edits"] = _edit_summary(rows)
    return out


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=None, help="trained folder (default: the shipped asset:tiny_trained)")
    p.add_argument("--out", default="benchmarks/eval_tiny.json")
    p.add_argument("--device", default="auto")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--no-edits", action="store_true")
    p.add_argument("--images", default=None, help="also save every generated image to this .npz")
    p.add_argument("--rescore", default=None, help="an --images .npz of an earlier run: score it again, generate nothing")
    args = p.parse_args(argv)
    if args.rescore:
        result = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
        result.update(rescore(args.rescore, args.n))
        result["rescored_from_saved_images"] = True
    else:
        result = evaluate(args.weights, args.device, args.n, edits=not args.no_edits)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    if args.images:
        np.savez_compressed(args.images, **{k: np.asarray(v) for k, v in SAVED.items()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
