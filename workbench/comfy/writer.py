"""The experiment YAML for an ``Imported`` workflow: report header, schema keys, comments for the rest.

Also the Hydra overrides that compose such a file from wherever it was written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from workbench.comfy.graph import WorkflowError
from workbench.comfy.mapping import Imported
from workbench.errors import RunFailure

# ComfyUI's model loaders -> our model keys (with model.source=files, looked up under model.roots)
MODEL_KEYS = {"diffusion_model": "transformer", "text_encoder": "text_encoder", "vae": "vae"}

# Characters YAML 1.1 (OmegaConf's PyYAML) reads as line breaks although JSON leaves them raw.
_YAML_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _yaml_str(s: str) -> str:
    """A double-quoted YAML scalar; OmegaConf interpolation markers are escaped so prompts stay literal."""
    text = json.dumps(s.replace("${", "\\${"), ensure_ascii=False)
    for raw, escaped in _YAML_BREAKS.items():
        text = text.replace(raw, escaped)
    return text


def _comment(line: str) -> str:
    """A comment line with the workflow's text made one line: a newline in a node title or file name
    must not end the comment and start YAML keys (workflow data is data, never config)."""
    return "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in line)


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
    """The experiment file: report as a comment block, then our config's keys, then comments."""
    r.unmapped_keys = []
    comments: list[str] = []
    body = ["defaults:", f"  - override /template: {r.template}", f"  - override /sampler: {r.sampler_preset}", "",
            "model:", f"  variant: {r.variant}", *_model_lines(r, comments), ""]
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
    body += ["", "sampler:", *_sampler_lines(r)]
    if r.loras:
        body += ["", "lora:", "  name: imported", "  items:"]
        body += [f"    - {{file: {_yaml_value(x['file'])}, strength: {float(x['strength'])!r}}}" for x in r.loras]
    tail = ["", "# Not expressible in the config schema yet:", *comments] if comments else []
    return "\n".join([_comment(x) for x in _header(r)] + [""] + body + [_comment(x) for x in tail]) + "\n"


def _model_lines(r: Imported, comments: list[str]) -> list[str]:
    """model.source=files and the three file keys; with a loader missing (an all-in-one checkpoint),
    every file goes to a comment instead (a partial set of files would not load)."""
    as_keys = all(role in r.models for role in MODEL_KEYS)
    lines = ["  source: files  # look the files up under model.roots (see `workbench models`)"] if as_keys else []
    for role, info in r.models.items():
        extra = ", ".join(f"{k}={v}" for k, v in info.items() if k != "file" and v is not None)
        if as_keys and role in MODEL_KEYS:
            lines.append(f"  {MODEL_KEYS[role]}: {_yaml_value(info['file'])}"
                         + (f"  {_comment('# ' + extra)}" if extra else ""))
        else:
            comments.append(f"# model {role}: {info['file']}" + (f"  ({extra})" if extra else ""))
            r.unmapped_keys.append(f"model {role} file ({info['file']})")
    return lines


def _sampler_lines(r: Imported) -> list[str]:
    lines = [f"  scheduler: {r.scheduler_kind}"]
    if r.steps is not None:
        lines.append(f"  steps: {r.steps}")
    if r.cfg is not None:
        lines.append(f"  cfg: {float(r.cfg)!r}")
    if r.cfg_norm is not None:
        lines += ["  guidance: cfg_norm  # ComfyUI CFGNorm node", f"  cfg_norm_strength: {float(r.cfg_norm)!r}"]
    else:
        lines.append("  guidance: cfg  # ComfyUI KSampler: plain CFG")
    if r.shift is not None:
        lines += ["  shift_mode: fixed", f"  shift: {float(r.shift)!r}  # ModelSamplingAuraFlow"]
    return lines


def _header(r: Imported) -> list[str]:
    head = ["# @package _global_", f"# Imported by `workbench import-comfy` from {r.source}.",
            "# Values follow the workflow's links (Primitive / switch nodes, subgraphs), not stale widgets."]
    if r.sampler_name is not None:
        head.append(f"# ComfyUI KSampler: {r.sampler_name} / {r.scheduler}")
    report = report_lines(r)
    return head + (["#", "# Import report:"] + [f"#   - {line}" for line in report] if report else [])


def report_lines(r: Imported) -> list[str]:
    return list(r.report) + [f"written as a comment (no schema key): {k}" for k in r.unmapped_keys]


def write_yaml(text: str, out: Path, force: bool = False) -> None:
    """Write ``text`` to ``out`` atomically: a temporary file in the same folder, then a rename.

    ``out`` is checked first (``check_output``); a failed write leaves ``out`` as it was (RunFailure).
    """
    out = check_output(out, force)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as err:
        raise WorkflowError(f"cannot write {out}: {err.strerror or err}; choose another -o path") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a written config is as readable as any file
        os.replace(tmp, out)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise RunFailure(f"writing {out} failed ({err.strerror or err}); nothing was written, "
                         f"{'the existing file is unchanged' if out.exists() else 'no file was left'}") from None


def check_output(out: Path, force: bool = False) -> Path:
    """Refuse an output path that is a folder, sits under a file, or exists (unless ``force``)."""
    out = Path(out)
    if out.is_dir():
        raise WorkflowError(f"-o {out} is a folder: give a file name, e.g. {out / 'from_comfy.yaml'}")
    if out.suffix != ".yaml":
        raise WorkflowError(f"-o {out}: expected a .yaml file name (Hydra reads experiments as .yaml)")
    if out.exists() and not force:
        raise WorkflowError(f"-o {out} exists: pass --force to replace it, or choose another name")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise WorkflowError(f"cannot write {out}: {parent} is a file, not a folder")
    return out


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
