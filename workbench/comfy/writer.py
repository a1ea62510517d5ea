"""The experiment YAML for an ``Imported`` workflow: report header, schema keys, comments for the rest.

Also the Hydra overrides that compose such a file from wherever it was written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from workbench.comfy.mapping import Imported
from workbench.comfy.schema_support import schema_support


def _yaml_str(s: str) -> str:
    """A double-quoted YAML scalar; OmegaConf interpolation markers are escaped so prompts stay literal."""
    return json.dumps(s.replace("${", "\\${"), ensure_ascii=False)


def _yaml_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return _yaml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_yaml_value(x) for x in v) + "]"
    return repr(v)


def to_yaml(r: Imported) -> str:
    """The experiment file: report as a comment block, then the keys our schema has, then comments."""
    sc = schema_support()
    body = ["defaults:", f"  - override /template: {r.template}", f"  - override /sampler: {r.sampler_preset}", "",
            "model:", f"  variant: {r.variant}"]
    comments: list[str] = []
    r.unmapped_keys = []
    roles = ("diffusion_model", "text_encoder", "vae")
    as_keys = sc.files_source and all(role in sc.model_files and role in r.models for role in roles)
    if as_keys:
        body.append("  source: files  # look the files up under model.roots (see `workbench models`)")
    for role, info in r.models.items():
        extra = ", ".join(f"{k}={v}" for k, v in info.items() if k != "file" and v is not None)
        if as_keys and role in sc.model_files:
            body.append(f"  {sc.model_files[role]}: {_yaml_value(info['file'])}" + (f"  # {extra}" if extra else ""))
        else:
            comments.append(f"# model {role}: {info['file']}" + (f"  ({extra})" if extra else ""))
            r.unmapped_keys.append(f"model {role} file ({info['file']})")
    body.append("")
    body.append(f"prompts: {_yaml_value(r.prompts)}")
    body.append(f"negative_prompt: {_yaml_value(r.negative_prompt)}")
    if r.images:
        body.append(f"images: {_yaml_value(r.images)}  # names in ComfyUI's input/ folder")
    if r.width is not None and r.height is not None:
        body += [f"height: {r.height}", f"width: {r.width}"]
    elif r.images:
        body += ["height: null  # from the reference image, as ComfyUI's VAEEncode'd reference", "width: null"]
    if r.seeds:
        body.append(f"seeds: {_yaml_value(r.seeds)}")
    sampler = []
    if sc.schedulers and r.scheduler_kind in sc.schedulers:
        sampler.append(f"  scheduler: {r.scheduler_kind}")
    if r.steps is not None:
        sampler.append(f"  steps: {r.steps}")
    if r.cfg is not None:
        sampler.append(f"  cfg: {float(r.cfg)!r}")
    if r.cfg_norm is not None and sc.cfg_norm:
        sampler += ["  guidance: cfg_norm  # ComfyUI CFGNorm node", f"  cfg_norm_strength: {float(r.cfg_norm)!r}"]
    else:
        sampler.append("  guidance: cfg  # ComfyUI KSampler: plain CFG")
        if r.cfg_norm is not None:
            comments.append(f"# CFGNorm strength {r.cfg_norm}: ComfyUI rescales the CFG result to the conditional "
                            "norm (clamped <= 1); no schema key")
            r.unmapped_keys.append(f"CFGNorm (strength {r.cfg_norm})")
    if r.shift is not None:
        sampler += ["  shift_mode: fixed", f"  shift: {float(r.shift)!r}  # ModelSamplingAuraFlow"]
    body += ["", "sampler:", *sampler]
    if r.loras:
        if sc.loras:
            body += ["", "lora:", "  name: imported", "  items:"]
            body += [f"    - {{file: {_yaml_value(x['file'])}, strength: {float(x['strength'])!r}}}" for x in r.loras]
        else:
            comments += [f"# lora: {x['file']} strength {x['strength']}" for x in r.loras]
            comments.append("#   (the schema refuses lora.items: LoRA loading is not available yet)")
            r.unmapped_keys += [f"LoRA {x['file']} (strength {x['strength']})" for x in r.loras]
    head = ["# @package _global_", f"# Imported by `workbench import-comfy` from {r.source}.",
            "# Values follow the workflow's links (Primitive / switch nodes, subgraphs), not stale widgets."]
    if r.sampler_name is not None:
        head.append(f"# ComfyUI KSampler: {r.sampler_name} / {r.scheduler}")
    report = report_lines(r)
    head += ["#", "# Import report:"] + [f"#   - {line}" for line in report] if report else []
    tail = ["", "# Not expressible in the config schema yet:", *comments] if comments else []
    return "\n".join(head + [""] + body + tail) + "\n"


def report_lines(r: Imported) -> list[str]:
    return list(r.report) + [f"written as a comment (no schema key): {k}" for k in r.unmapped_keys]


# ============================================================================ using the result
def load_experiment(path: Path) -> list[str]:
    """Hydra overrides that compose ``path`` as an experiment (``compose(load_experiment(p))``).

    Hydra finds experiments only under a search-path folder named ``experiment/``; a file elsewhere is
    copied into a fresh temporary one.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"experiment file {str(path)!r} not found")
    if path.parent.name != "experiment" or path.suffix != ".yaml":
        root = Path(tempfile.mkdtemp(prefix="workbench-experiment-"))
        (root / "experiment").mkdir()
        shutil.copyfile(path, root / "experiment" / (path.stem + ".yaml"))
        path = root / "experiment" / (path.stem + ".yaml")
    return [f"hydra.searchpath=['file://{path.parent.parent}']", f"experiment={path.stem}"]
