"""ComfyUI node types and their inputs -> our experiment settings (``Imported``), with a report.

Starting from the active KSampler, each input (model, conditioning, latent, VAE) is followed back to
the loader / encoder / latent node it comes from; anything that cannot be mapped is reported, never
silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from workbench.comfy.graph import BYPASSED, MUTED, Link, Node, WorkflowError, describe_cycle, find_cycle
from workbench.comfy.node_types import NOTES, OUTPUTS, SCHEDULER_KINDS, TEMPLATES
from workbench.comfy.reader import read_workflow
from workbench.comfy.resolve import Resolver, as_float, as_int, as_str


@dataclass
class Imported:
    """What the workflow asks for, in our terms, plus the report of what did not map."""

    source: str
    template: str = "qwen_t2i"
    variant: str = "t2i"
    prompts: list[str] = field(default_factory=list)
    negative_prompt: str = ""
    images: list[str] = field(default_factory=list)
    width: Optional[int] = None
    height: Optional[int] = None
    seeds: list[int] = field(default_factory=list)
    steps: Optional[int] = None
    cfg: Optional[float] = None
    shift: Optional[float] = None
    sampler_name: Optional[str] = None
    scheduler: Optional[str] = None
    sampler_preset: str = "comfy_euler"
    scheduler_kind: str = "euler"  # our sampler.scheduler
    cfg_norm: Optional[float] = None  # CFGNorm strength when present
    models: dict[str, dict] = field(default_factory=dict)  # diffusion_model / text_encoder / vae -> {file, ...}
    loras: list[dict] = field(default_factory=list)  # [{file, strength}] in application order
    report: list[str] = field(default_factory=list)  # one line per thing not mapped / worth knowing
    unmapped_keys: list[str] = field(default_factory=list)  # what went to YAML comments for want of a schema key


def _num(x: Any) -> Any:
    """Round UI float noise (3.1000000000000005 -> 3.1); ints stay ints."""
    return round(float(x), 6) if isinstance(x, float) else x


def _opt(conv, v: Any, what: str) -> Any:
    """``conv(v, what)`` for a value that was found, None when the source gave none (already reported)."""
    return None if v is None else conv(v, what)


def import_workflow(path: Path) -> Imported:
    nodes, source = read_workflow(Path(path))
    try:
        return map_workflow(nodes, source)
    except WorkflowError as err:
        raise WorkflowError(f"{Path(path).name}: {err}") from None


def map_workflow(nodes: dict[str, Node], source: str) -> Imported:
    """Read the active sampler's inputs back to their sources and map them onto our config."""
    r = Imported(source)
    ev = Resolver(nodes, r.report)
    k = _active_sampler(nodes)
    decodes = [n.id for n in nodes.values() if n.type == "VAEDecode" and n.mode == 0
               and isinstance(n.inputs.get("samples"), Link) and n.inputs["samples"].node == k.id]
    cycle = find_cycle(nodes, [k.id, *decodes])
    if cycle:
        raise WorkflowError(f"the workflow's links form a cycle, which ComfyUI cannot run either: "
                            f"{describe_cycle(nodes, cycle)}; remove one of these links")
    for extra in [n for n in nodes.values() if _is_sampler(n) and n is not k]:
        ev.unmapped_node(extra, "a second sampler; only the first one is imported")
    ev.used.add(k.id)
    _sampler_settings(ev, k, r)
    _model_chain(ev, k, r)
    if r.shift is None:
        r.report.append("no ModelSamplingAuraFlow on the model path: ComfyUI then uses the checkpoint's default "
                        f"shift; kept the shift of sampler {r.sampler_preset}")
    pos = _conditioning(ev, k.inputs.get("positive"), f"{k.label()} positive", r, positive=True)
    _conditioning(ev, k.inputs.get("negative"), f"{k.label()} negative", r, positive=False)
    if pos is not None:
        r.template, r.variant = TEMPLATES[pos.type]
        unet = (r.models.get("diffusion_model") or {}).get("file") or ""
        if r.variant == "edit_2509" and "2511" in unet:
            r.variant = "edit_2511"
        if r.variant == "t2i" and "2512" in unet:  # Qwen-Image-2512: the t2i architecture (loading.detect names it so)
            r.variant = "t2i_2512"
    _latent(ev, k, r)
    _vae(ev, k, r)
    _leftovers(ev, r)
    return r


def _is_sampler(n: Node) -> bool:
    return n.type in ("KSampler", "KSamplerAdvanced") and n.mode == 0


def _active_sampler(nodes: dict[str, Node]) -> Node:
    """The first active KSampler / KSamplerAdvanced: the one whose image is imported."""
    samplers = [n for n in nodes.values() if _is_sampler(n)]
    if not samplers:
        others = sorted({n.type for n in nodes.values() if "Sampler" in n.type})
        raise WorkflowError("no active KSampler / KSamplerAdvanced node: nothing to import"
                            + (f" (found {', '.join(others)}, which this importer does not read)" if others else ""))
    return samplers[0]


def _sampler_settings(ev: Resolver, k: Node, r: Imported) -> None:
    """Seed, steps, cfg, sampler / scheduler names and denoise of the sampler node, read at their sources."""
    adv = k.type == "KSamplerAdvanced"
    kname = k.label()
    seed = ev.value(k.inputs.get("noise_seed" if adv else "seed"), f"{kname} seed")
    r.seeds = [as_int(seed, f"{kname} seed")] if seed is not None else []
    if k.inputs.get("control_after_generate") in ("randomize", "increment", "decrement"):
        r.report.append(f"{kname} seed control is {k.inputs['control_after_generate']!r}: the stored seed "
                        "is the one of the last queued run")
    steps, cfg = ev.value(k.inputs.get("steps"), f"{kname} steps"), ev.value(k.inputs.get("cfg"), f"{kname} cfg")
    r.steps = _opt(as_int, steps, f"{kname} steps")
    r.cfg = _num(_opt(as_float, cfg, f"{kname} cfg"))
    r.sampler_name = _opt(as_str, ev.value(k.inputs.get("sampler_name"), f"{kname} sampler_name"),
                          f"{kname} sampler_name")
    r.scheduler = _opt(as_str, ev.value(k.inputs.get("scheduler"), f"{kname} scheduler"), f"{kname} scheduler")
    if (r.sampler_name, r.scheduler) != ("euler", "simple"):
        r.scheduler_kind = SCHEDULER_KINDS.get(r.sampler_name, "euler")
        r.report.append(
            f"{kname} sampler {r.sampler_name!r} / scheduler {r.scheduler!r}: no exact workbench match (ours is "
            f"euler / simple); imported as sampler.scheduler={r.scheduler_kind} with a fixed shift")
    denoise = ev.value(k.inputs.get("denoise"), f"{kname} denoise") if not adv else None
    if denoise is not None and as_float(denoise, f"{kname} denoise") != 1.0:
        r.report.append(f"{kname} denoise={denoise}: partial denoising (img2img) is not mapped; we denoise fully")
    if adv:
        r.report.append(f"{kname}: start/end step and add_noise settings are not mapped")


def _name(ev: Resolver, node: Node, key: str) -> Optional[str]:
    """A string input (file name, prompt) read at its source; None when it has none."""
    what = f"{node.label()} {key}"
    return _opt(as_str, ev.value(node.inputs.get(key), what), what)


def _model_chain(ev: Resolver, k: Node, r: Imported) -> None:
    ref, what = k.inputs.get("model"), f"{k.label()} model"
    while True:
        node = ev.producer(ref, what)
        if node is None:
            r.report.append(f"{what}: no model loader found on the model path")
            return
        t = node.type
        if t == "UNETLoader":
            r.models["diffusion_model"] = {"file": _name(ev, node, "unet_name"),
                                           "weight_dtype": node.inputs.get("weight_dtype", "default")}
            return
        if t == "CheckpointLoaderSimple":
            r.models["checkpoint"] = {"file": _name(ev, node, "ckpt_name")}
            ev.unmapped_node(node, "all-in-one checkpoints are not mapped")
            return
        if t == "ModelSamplingAuraFlow":
            if r.shift is None:  # the one nearest the sampler wins
                what_shift = f"{node.label()} shift"
                r.shift = _num(_opt(as_float, ev.value(node.inputs.get("shift"), what_shift), what_shift))
            else:
                r.report.append(f"{node.label()}: an earlier ModelSamplingAuraFlow is overridden by a later one")
        elif t == "CFGNorm":
            if r.cfg_norm is None:
                strength = ev.value(node.inputs.get("strength"), f"{node.label()} strength")
                r.cfg_norm = _num(1.0 if strength is None else as_float(strength, f"{node.label()} strength"))
        elif t in ("LoraLoaderModelOnly", "LoraLoader"):
            strength = ev.value(node.inputs.get("strength_model"), f"{node.label()} strength_model")
            r.loras.insert(0, {"file": _name(ev, node, "lora_name"),
                               "strength": _num(_opt(as_float, strength, f"{node.label()} strength_model") or 0.0)})
            if t == "LoraLoader":
                r.report.append(f"{node.label()}: the text-encoder (clip) strength of this LoRA is not mapped")
        else:
            ev.unmapped_node(node, "on the model path: no workbench equivalent")
        ref = node.inputs.get("model")


def _conditioning(ev: Resolver, ref: Any, what: str, r: Imported, positive: bool) -> Optional[Node]:
    while True:
        node = ev.producer(ref, what)
        if node is None:
            r.report.append(f"{what}: no text-encode node found")
            return None
        if node.type in TEMPLATES:
            break
        if node.type == "ConditioningZeroOut":  # following its input would wrongly import the other prompt
            ev.unmapped_node(node, "zeroed conditioning has no prompt equivalent; imported the prompt ''")
            if positive:
                r.prompts = [""]
            return None
        ev.unmapped_node(node, f"modifies the {'positive' if positive else 'negative'} conditioning: not mapped")
        ref = node.inputs.get("conditioning") or node.first_link()
    text = _name(ev, node, "text" if node.type == "CLIPTextEncode" else "prompt") or ""
    images = []
    for name in ("image", "image1", "image2", "image3"):
        if name in node.inputs:
            file = _image_source(ev, node.inputs[name], f"{node.label()} {name}")
            if file is not None:
                images.append(file)
    _clip(ev, node, r)
    if positive:
        r.prompts, r.images = [text], images
    else:
        r.negative_prompt = text
        if node.type != "CLIPTextEncode" and images != r.images:
            r.report.append(f"{what}: its reference images {images} differ from the positive's {r.images}; "
                            "we use the same images for both")
    return node


def _image_source(ev: Resolver, ref: Any, what: str) -> Optional[str]:
    while True:
        node = ev.producer(ref, what)
        if node is None:
            return None
        if node.type == "LoadImage":
            return _name(ev, node, "image")
        ev.unmapped_node(node, "transforms a reference image; our reference.* settings size the references")
        ref = node.inputs.get("image") or node.first_link()


def _clip(ev: Resolver, encode: Node, r: Imported) -> None:
    node = ev.producer(encode.inputs.get("clip"), f"{encode.label()} clip")
    while node is not None and node.type == "LoraLoader":  # its clip half; the model half is read on the model path
        node = ev.producer(node.inputs.get("clip"), f"{node.label()} clip")
    if node is None:
        return
    if node.type == "CLIPLoader":
        r.models.setdefault("text_encoder", {"file": _name(ev, node, "clip_name"),
                                             "type": node.inputs.get("type")})
    else:
        ev.unmapped_node(node, "provides the text encoder: only CLIPLoader is mapped")


def _latent(ev: Resolver, k: Node, r: Imported) -> None:
    what = f"{k.label()} latent_image"
    node = ev.producer(k.inputs.get("latent_image"), what)
    if node is None:
        r.report.append(f"{what}: no latent source found; size left to the defaults")
    elif node.type in ("EmptySD3LatentImage", "EmptyLatentImage"):
        r.width = _opt(as_int, ev.value(node.inputs.get("width"), f"{node.label()} width"), f"{node.label()} width")
        r.height = _opt(as_int, ev.value(node.inputs.get("height"), f"{node.label()} height"),
                        f"{node.label()} height")
        batch = ev.value(node.inputs.get("batch_size"), f"{node.label()} batch_size")
        if batch not in (None, 1):
            r.report.append(f"{node.label()} batch_size={batch}: ComfyUI draws a batch from one seed; imported "
                            "one image per seed")
    elif node.type == "VAEEncode":
        ev.used.add(node.id)
        if r.template == "qwen_t2i":
            r.report.append(f"{node.label()}: img2img from an encoded image is not mapped")
        # edit: the output takes the reference's size (our height/width null)
    else:
        ev.unmapped_node(node, "makes the initial latent: not mapped")


def _vae(ev: Resolver, k: Node, r: Imported) -> None:
    decodes = [n for n in ev.nodes.values() if n.type == "VAEDecode" and n.mode == 0
               and isinstance(n.inputs.get("samples"), Link) and n.inputs["samples"].node == k.id]
    for dec in decodes[:1]:
        ev.used.add(dec.id)
        node = ev.producer(dec.inputs.get("vae"), f"{dec.label()} vae")
        if node is not None and node.type == "VAELoader":
            r.models["vae"] = {"file": _name(ev, node, "vae_name")}
        elif node is not None:
            ev.unmapped_node(node, "provides the VAE: only VAELoader is mapped")
        for out in ev.nodes.values():  # the image's consumers: save / preview are expected, the rest is listed
            if isinstance(out.inputs.get("images"), Link) and out.inputs["images"].node == dec.id and \
                    out.type in OUTPUTS:
                ev.used.add(out.id)
    if not decodes:
        r.report.append(f"{k.label()}: no VAEDecode reads its output")


def _leftovers(ev: Resolver, r: Imported) -> None:
    for nid, why in ev.unmapped.items():
        r.report.append(f"not mapped: {ev.nodes[nid].label()}: {why}")
    notes = 0
    for n in ev.nodes.values():
        if n.id in ev.used:
            continue
        if n.type in NOTES:
            notes += 1
            continue
        state = {MUTED: "muted", BYPASSED: "bypassed"}.get(n.mode, "")
        r.report.append(f"ignored: {n.label()}{' (' + state + ')' if state else ''} does not feed the sampled image")
    if notes:
        r.report.append(f"ignored: {notes} note node(s) (documentation only)")
