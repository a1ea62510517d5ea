"""Stage 1: every caption (t2i) and every edit pair encoded once by the frozen seeded text encoder."""

from __future__ import annotations

from pathlib import Path

import torch

from workbench.training import world
from workbench.training.config import TrainConfig, run_configs
from workbench.training.data import edit_pairs, pad_rows, scene_captions, t2i_scenes


@torch.no_grad()
def precompute(cfg: TrainConfig, path: Path) -> None:
    """Write ``path`` (conditionings.pt): padded float16 embeddings and lengths of the t2i captions
    (through the t2i template) and of the edit instructions (edit template, source image's vision tokens)."""
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
    t2i, t2i_len = pad_rows(rows)

    rows = []
    for pair in edit_pairs(cfg):
        img = world.render(pair.source)
        plan = reference_sizes(img.width, img.height, edit.reference)
        vlm = latents_stage.resize(img, *plan.vlm, plan.resize_filter)
        c = encode_prompts(tokenizer, encoder, edit.template, [pair.instruction], [vlm],
                           resample=edit.reference.vlm_resample.value)
        rows.append(c.embeds[0, c.mask[0]])
    edits, edit_len = pad_rows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"captions": captions, "t2i": t2i, "t2i_len": t2i_len, "edit": edits, "edit_len": edit_len,
                "data_seed": cfg.data_seed, "edit_pairs": cfg.data.edit_pairs,
                "text_encoder_seed": run.model.seed}, path)
    print(f"precompute: {len(captions)} captions, {len(rows)} edit pairs -> {path}", flush=True)
