"""``workbench import-comfy``: a ComfyUI workflow (UI JSON, API JSON or a PNG) -> an experiment config.

ComfyUI graphs route values through Primitive and switch nodes, subgraphs, reroutes and bypassed
nodes, and the KSampler's own stored widget values are often stale: every value is therefore read by
following links back to where it comes from, never from the sampler's widgets when a link feeds them.
Anything that cannot be mapped onto our config is reported (printed, and as a comment block at the
top of the YAML), never silently dropped. ComfyUI is GPL-3.0: this reads its file format only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

MUTED, BYPASSED = 2, 4
SUBGRAPH_IN, SUBGRAPH_OUT = -10, -20

# Positional widget names of the node types we read (UI format stores only ``widgets_values``).
WIDGETS: dict[str, list[str]] = {
    "KSampler": ["seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"],
    "KSamplerAdvanced": ["add_noise", "noise_seed", "control_after_generate", "steps", "cfg", "sampler_name",
                         "scheduler", "start_at_step", "end_at_step", "return_with_leftover_noise"],
    "UNETLoader": ["unet_name", "weight_dtype"],
    "CLIPLoader": ["clip_name", "type", "device"],
    "VAELoader": ["vae_name"],
    "LoraLoaderModelOnly": ["lora_name", "strength_model"],
    "LoraLoader": ["lora_name", "strength_model", "strength_clip"],
    "ModelSamplingAuraFlow": ["shift"],
    "CFGNorm": ["strength"],
    "CLIPTextEncode": ["text"],
    "TextEncodeQwenImageEdit": ["prompt"],
    "TextEncodeQwenImageEditPlus": ["prompt"],
    "EmptySD3LatentImage": ["width", "height", "batch_size"],
    "EmptyLatentImage": ["width", "height", "batch_size"],
    "LoadImage": ["image", "upload"],
    "PrimitiveInt": ["value", "control_after_generate"],
    "PrimitiveFloat": ["value"],
    "PrimitiveBoolean": ["value"],
    "PrimitiveString": ["value"],
    "PrimitiveStringMultiline": ["value"],
    "PrimitiveNode": ["value", "control_after_generate"],  # legacy frontend-only primitive
    "ComfySwitchNode": ["switch"],
}
PRIMITIVES = {"PrimitiveInt", "PrimitiveFloat", "PrimitiveBoolean", "PrimitiveString", "PrimitiveStringMultiline",
              "PrimitiveNode"}
SWITCHES = {"ComfySwitchNode"}
NOTES = {"MarkdownNote", "Note"}
OUTPUTS = {"SaveImage", "SaveImageAdvanced", "PreviewImage"}
TEMPLATES = {  # text-encode node -> (template, model variant)
    "CLIPTextEncode": ("qwen_t2i", "t2i"),
    "TextEncodeQwenImageEdit": ("qwen_edit", "edit"),
    "TextEncodeQwenImageEditPlus": ("qwen_edit_plus", "edit_2509"),
}
# ComfyUI sampler names -> sampler.scheduler; only euler / simple is the same computation as ours
# (fixed-shift flow Euler, sampler comfy_euler); the others are the nearest we have and are reported.
SCHEDULER_KINDS = {"euler": "euler", "heun": "heun", "uni_pc": "unipc", "uni_pc_bh2": "unipc"}


class WorkflowError(ValueError):
    """The file is not a workflow we can read, or it lacks what an experiment needs."""


@dataclass(frozen=True)
class Link:
    node: str  # flat node id ("3", or "76:3" inside subgraph instance 76, as ComfyUI's API format)
    slot: int


@dataclass
class Node:
    id: str
    type: str
    mode: int = 0
    title: Optional[str] = None
    inputs: dict[str, Any] = field(default_factory=dict)  # name -> Link | literal widget value
    input_types: dict[str, str] = field(default_factory=dict)
    output_types: list[str] = field(default_factory=list)

    def label(self) -> str:
        title = f" '{self.title}'" if self.title and self.title != self.type else ""
        return f"#{self.id} {self.type}{title}"


# ============================================================================ reading
def read_workflow(path: Path) -> tuple[dict[str, Node], str]:
    """Flat nodes of a workflow file (UI JSON, API JSON, or PNG with ComfyUI's text chunks) + a description."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"workflow file {str(path)!r} not found")
    if path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n":
        from PIL import Image

        with Image.open(path) as img:
            text = dict(getattr(img, "text", {}))
        # `prompt` (API) is what ComfyUI actually executed; `workflow` (UI) is the editable graph.
        for key in ("prompt", "workflow"):
            if key in text:
                data = _parse_json(text[key], f"{path} (PNG chunk {key!r})")
                nodes, kind = parse_workflow(data)
                return nodes, f"{path.name} (PNG text chunk '{key}', {kind})"
        hint = " (it is a workbench image: use `workbench reproduce`)" if "workbench" in text else ""
        raise WorkflowError(f"{path} has no ComfyUI 'prompt' or 'workflow' text chunk{hint}")
    nodes, kind = parse_workflow(_parse_json(path.read_text(encoding="utf-8"), str(path)))
    return nodes, f"{path.name} ({kind})"


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise WorkflowError(f"{where} is not valid JSON: {err}") from None


def parse_workflow(data: Any) -> tuple[dict[str, Node], str]:
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        return flatten_ui(data), f"ComfyUI UI workflow, version {data.get('version', '?')}"
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):  # a /prompt request body
        data = data["prompt"]
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return flatten_api(data), "ComfyUI API workflow"
    raise WorkflowError("not a ComfyUI workflow: expected UI format (a 'nodes' list) or API format "
                        "({id: {class_type, inputs}})")


def flatten_api(prompt: dict) -> dict[str, Node]:
    nodes = {}
    for nid, n in prompt.items():
        inputs = {}
        for name, v in (n.get("inputs") or {}).items():
            is_link = isinstance(v, list) and len(v) == 2 and isinstance(v[0], (str, int)) and isinstance(v[1], int)
            inputs[name] = Link(str(v[0]), v[1]) if is_link else v
        nodes[str(nid)] = Node(str(nid), n["class_type"], 0, (n.get("_meta") or {}).get("title"), inputs)
    return nodes


def _links(graph: dict) -> dict[int, tuple]:
    """Link id -> (origin id, origin slot); top level stores arrays, subgraphs store objects."""
    out = {}
    for link in graph.get("links") or []:
        if isinstance(link, dict):
            out[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"])
        else:
            out[link[0]] = (link[1], link[2], link[3], link[4])
    return out


@dataclass
class _Scope:
    """One graph level: the top level, or the inside of one subgraph instance."""

    prefix: str
    nodes: dict[int, dict]
    links: dict[int, tuple]
    parent: Optional["_Scope"] = None
    instance: Optional[dict] = None  # the subgraph node in the parent scope
    definition: Optional[dict] = None
    mode: int = 0  # the instance's mode, inherited by its inner nodes


def flatten_ui(wf: dict) -> dict[str, Node]:
    """UI graph -> flat nodes with links resolved across subgraph boundaries (ids like "76:3")."""
    defs = {sg["id"]: sg for sg in (wf.get("definitions") or {}).get("subgraphs") or []}
    out: dict[str, Node] = {}

    def child(scope: _Scope, inst: dict) -> _Scope:
        sg = defs[inst["type"]]
        if scope.prefix.count(":") > 16:
            raise WorkflowError(f"subgraph {sg.get('name', sg['id'])!r} nests itself too deep")
        mode = scope.mode or inst.get("mode", 0)
        return _Scope(f"{scope.prefix}{inst['id']}:", {n["id"]: n for n in sg.get("nodes", [])}, _links(sg),
                      scope, inst, sg, mode)

    def origin(scope: _Scope, node_id: int, slot: int) -> Optional[Link]:
        if node_id == SUBGRAPH_IN:  # the instance's input of that name, in the parent graph
            name = scope.definition["inputs"][slot]["name"]
            inp = next((i for i in scope.instance.get("inputs", []) if i["name"] == name), None)
            if inp is None or inp.get("link") is None:
                return None  # not connected outside: the inner node's own widget value applies
            o = scope.parent.links[inp["link"]]
            return origin(scope.parent, o[0], o[1])
        node = scope.nodes.get(node_id)
        if node is None:
            raise WorkflowError(f"a link comes from node {scope.prefix}{node_id}, which does not exist")
        if node["type"] in defs:  # into the subgraph, to whatever feeds its output `slot`
            inner = child(scope, node)
            for o in inner.links.values():
                if o[2] == SUBGRAPH_OUT and o[3] == slot:
                    return origin(inner, o[0], o[1])
            return None
        return Link(f"{scope.prefix}{node_id}", slot)

    def walk(scope: _Scope) -> None:
        for n in scope.nodes.values():
            if n["type"] in defs:
                walk(child(scope, n))
                continue
            names = WIDGETS.get(n["type"], [])
            values = n.get("widgets_values")
            if isinstance(values, dict):
                inputs = dict(values)
            else:
                values = values or []
                inputs = {names[i] if i < len(names) else f"widget_{i}": v for i, v in enumerate(values)}
            types = {}
            for inp in n.get("inputs") or []:
                types[inp["name"]] = inp.get("type", "")
                if inp.get("link") is not None and inp["link"] in scope.links:
                    o = scope.links[inp["link"]]
                    src = origin(scope, o[0], o[1])
                    if src is not None:
                        inputs[inp["name"]] = src
            out[f"{scope.prefix}{n['id']}"] = Node(
                f"{scope.prefix}{n['id']}", n["type"], scope.mode or n.get("mode", 0), n.get("title"), inputs, types,
                [o.get("type", "") for o in n.get("outputs") or []],
            )

    walk(_Scope("", {n["id"]: n for n in wf["nodes"]}, _links(wf)))
    return out


# ============================================================================ evaluation
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


class _Literal:
    def __init__(self, value: Any):
        self.value = value


class _Evaluator:
    def __init__(self, nodes: dict[str, Node], result: Imported):
        self.nodes, self.result = nodes, result
        self.used: set[str] = set()  # nodes that take part in making the sampled image
        self.unmapped: dict[str, str] = {}  # node id -> why

    def note(self, text: str) -> None:
        if text not in self.result.report:
            self.result.report.append(text)

    def unmapped_node(self, node: Node, why: str) -> None:
        self.used.add(node.id)
        self.unmapped.setdefault(node.id, why)

    def follow(self, ref: Any, what: str) -> Any:
        """Where ``ref`` really comes from: a literal (``_Literal``), a producing (Node, slot), or None."""
        seen = set()
        while isinstance(ref, Link):
            if ref in seen:
                raise WorkflowError(f"{what}: the links form a cycle at node {ref.node}")
            seen.add(ref)
            node = self.nodes.get(ref.node)
            if node is None:
                raise WorkflowError(f"{what}: link to node {ref.node}, which does not exist")
            self.used.add(node.id)
            if node.mode == MUTED:
                self.note(f"{what} comes from muted node {node.label()}: ComfyUI would not run this workflow")
                return None
            if node.mode == BYPASSED:
                ref = self._bypass(node, ref.slot)
                continue
            if node.type in PRIMITIVES:
                return _Literal(self.value(node.inputs.get("value"), what))
            if node.type in SWITCHES:
                on = bool(self.value(node.inputs.get("switch"), f"{what} (switch {node.label()})"))
                ref = node.inputs.get("on_true" if on else "on_false")
                if ref is None:
                    self.note(f"{what}: switch {node.label()} is {on} but its on_{str(on).lower()} input is empty")
                    return None
                continue
            if node.type == "Reroute":
                ref = next((v for v in node.inputs.values() if isinstance(v, Link)), None)
                continue
            return node, ref.slot
        return None if ref is None else _Literal(ref)

    def _bypass(self, node: Node, slot: int) -> Optional[Link]:
        """A bypassed node passes through its first linked input of the output's type (the same slot first)."""
        want = node.output_types[slot] if slot < len(node.output_types) else ""
        links = [(name, v) for name, v in node.inputs.items() if isinstance(v, Link)]
        typed = [(n, v) for n, v in links if not want or not node.input_types.get(n) or node.input_types[n] == want]
        pick = typed[slot] if slot < len(typed) else (typed[0] if typed else None)
        self.note(f"bypassed node {node.label()}: its input passes through")
        return pick[1] if pick else None

    def value(self, ref: Any, what: str) -> Any:
        got = self.follow(ref, what)
        if isinstance(got, _Literal):
            return got.value
        if got is not None:
            node, _ = got
            self.unmapped_node(node, f"produces {what}; only widget / Primitive values can be read")
        return None

    def producer(self, ref: Any, what: str) -> Optional[Node]:
        got = self.follow(ref, what)
        if isinstance(got, tuple):
            return got[0]
        if got is not None:
            self.note(f"{what}: expected a node output, found the literal {got.value!r}")
        return None


def _num(x: Any) -> Any:
    """Round UI float noise (3.1000000000000005 -> 3.1); ints stay ints."""
    return round(float(x), 6) if isinstance(x, float) else x


def import_workflow(path: Path) -> Imported:
    nodes, source = read_workflow(Path(path))
    return map_workflow(nodes, source)


def map_workflow(nodes: dict[str, Node], source: str) -> Imported:
    """Read the active sampler's inputs back to their sources and map them onto our config."""
    r = Imported(source)
    ev = _Evaluator(nodes, r)
    samplers = [n for n in nodes.values() if n.type in ("KSampler", "KSamplerAdvanced") and n.mode == 0]
    if not samplers:
        others = sorted({n.type for n in nodes.values() if "Sampler" in n.type})
        raise WorkflowError("no active KSampler / KSamplerAdvanced node: nothing to import"
                            + (f" (found {', '.join(others)}, which this importer does not read)" if others else ""))
    k = samplers[0]
    for extra in samplers[1:]:
        ev.unmapped_node(extra, "a second sampler; only the first one is imported")
    ev.used.add(k.id)
    adv = k.type == "KSamplerAdvanced"
    kname = k.label()

    seed = ev.value(k.inputs.get("noise_seed" if adv else "seed"), f"{kname} seed")
    r.seeds = [int(seed)] if seed is not None else []
    if k.inputs.get("control_after_generate") in ("randomize", "increment", "decrement"):
        r.report.append(f"{kname} seed control is {k.inputs['control_after_generate']!r}: the stored seed "
                        "is the one of the last queued run")
    steps, cfg = ev.value(k.inputs.get("steps"), f"{kname} steps"), ev.value(k.inputs.get("cfg"), f"{kname} cfg")
    r.steps = int(steps) if steps is not None else None
    r.cfg = _num(float(cfg)) if cfg is not None else None
    r.sampler_name = ev.value(k.inputs.get("sampler_name"), f"{kname} sampler_name")
    r.scheduler = ev.value(k.inputs.get("scheduler"), f"{kname} scheduler")
    kinds = _schema().schedulers or {"euler"}
    if (r.sampler_name, r.scheduler) != ("euler", "simple"):
        kind = SCHEDULER_KINDS.get(r.sampler_name)
        r.scheduler_kind = kind if kind in kinds else "euler"
        r.report.append(
            f"{kname} sampler {r.sampler_name!r} / scheduler {r.scheduler!r}: no exact workbench match (ours is "
            f"euler / simple); imported as sampler.scheduler={r.scheduler_kind} with a fixed shift")
    denoise = ev.value(k.inputs.get("denoise"), f"{kname} denoise") if not adv else None
    if denoise is not None and float(denoise) != 1.0:
        r.report.append(f"{kname} denoise={denoise}: partial denoising (img2img) is not mapped; we denoise fully")
    if adv:
        r.report.append(f"{kname}: start/end step and add_noise settings are not mapped")

    _model_chain(ev, k, r)
    if r.shift is None:
        r.report.append("no ModelSamplingAuraFlow on the model path: ComfyUI then uses the checkpoint's default "
                        f"shift; kept the shift of sampler {r.sampler_preset}")
    pos = _conditioning(ev, k.inputs.get("positive"), f"{kname} positive", r, positive=True)
    _conditioning(ev, k.inputs.get("negative"), f"{kname} negative", r, positive=False)
    if pos is not None:
        r.template, r.variant = TEMPLATES[pos.type]
        unet = (r.models.get("diffusion_model") or {}).get("file") or ""
        if r.variant == "edit_2509" and "2511" in unet:
            r.variant = "edit_2511"
    _latent(ev, k, r)
    _vae(ev, k, r)
    _leftovers(ev, r)
    return r


def _model_chain(ev: _Evaluator, k: Node, r: Imported) -> None:
    ref, what = k.inputs.get("model"), f"{k.label()} model"
    while True:
        node = ev.producer(ref, what)
        if node is None:
            r.report.append(f"{what}: no model loader found on the model path")
            return
        t = node.type
        if t == "UNETLoader":
            r.models["diffusion_model"] = {"file": ev.value(node.inputs.get("unet_name"), "UNETLoader unet_name"),
                                           "weight_dtype": node.inputs.get("weight_dtype", "default")}
            return
        if t == "CheckpointLoaderSimple":
            r.models["checkpoint"] = {"file": ev.value(node.inputs.get("ckpt_name"), "checkpoint name")}
            ev.unmapped_node(node, "all-in-one checkpoints are not mapped")
            return
        if t == "ModelSamplingAuraFlow":
            if r.shift is None:  # the one nearest the sampler wins
                r.shift = _num(float(ev.value(node.inputs.get("shift"), "ModelSamplingAuraFlow shift")))
            else:
                r.report.append(f"{node.label()}: an earlier ModelSamplingAuraFlow is overridden by a later one")
        elif t == "CFGNorm":
            if r.cfg_norm is None:
                r.cfg_norm = _num(float(ev.value(node.inputs.get("strength"), "CFGNorm strength") or 1.0))
        elif t in ("LoraLoaderModelOnly", "LoraLoader"):
            r.loras.insert(0, {"file": ev.value(node.inputs.get("lora_name"), f"{node.label()} lora_name"),
                               "strength": _num(float(ev.value(node.inputs.get("strength_model"),
                                                               f"{node.label()} strength") or 0.0))})
            if t == "LoraLoader":
                r.report.append(f"{node.label()}: the text-encoder (clip) strength of this LoRA is not mapped")
        else:
            ev.unmapped_node(node, "on the model path: no workbench equivalent")
        ref = node.inputs.get("model")


def _conditioning(ev: _Evaluator, ref: Any, what: str, r: Imported, positive: bool) -> Optional[Node]:
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
        ref = node.inputs.get("conditioning") or next((v for v in node.inputs.values() if isinstance(v, Link)), None)
    text = ev.value(node.inputs.get("text" if node.type == "CLIPTextEncode" else "prompt"), f"{node.label()} text")
    text = "" if text is None else str(text)
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


def _image_source(ev: _Evaluator, ref: Any, what: str) -> Optional[str]:
    while True:
        node = ev.producer(ref, what)
        if node is None:
            return None
        if node.type == "LoadImage":
            return ev.value(node.inputs.get("image"), f"{node.label()} image")
        ev.unmapped_node(node, "transforms a reference image; our reference.* settings size the references")
        ref = node.inputs.get("image") or next((v for v in node.inputs.values() if isinstance(v, Link)), None)


def _clip(ev: _Evaluator, encode: Node, r: Imported) -> None:
    node = ev.producer(encode.inputs.get("clip"), f"{encode.label()} clip")
    while node is not None and node.type == "LoraLoader":  # its clip half; the model half is read on the model path
        node = ev.producer(node.inputs.get("clip"), f"{node.label()} clip")
    if node is None:
        return
    if node.type == "CLIPLoader":
        r.models.setdefault("text_encoder", {"file": ev.value(node.inputs.get("clip_name"), "CLIPLoader clip_name"),
                                             "type": node.inputs.get("type")})
    else:
        ev.unmapped_node(node, "provides the text encoder: only CLIPLoader is mapped")


def _latent(ev: _Evaluator, k: Node, r: Imported) -> None:
    what = f"{k.label()} latent_image"
    node = ev.producer(k.inputs.get("latent_image"), what)
    if node is None:
        r.report.append(f"{what}: no latent source found; size left to the defaults")
    elif node.type in ("EmptySD3LatentImage", "EmptyLatentImage"):
        r.width = int(ev.value(node.inputs.get("width"), f"{node.label()} width"))
        r.height = int(ev.value(node.inputs.get("height"), f"{node.label()} height"))
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


def _vae(ev: _Evaluator, k: Node, r: Imported) -> None:
    decodes = [n for n in ev.nodes.values() if n.type == "VAEDecode" and n.mode == 0
               and isinstance(n.inputs.get("samples"), Link) and n.inputs["samples"].node == k.id]
    for dec in decodes[:1]:
        ev.used.add(dec.id)
        node = ev.producer(dec.inputs.get("vae"), f"{dec.label()} vae")
        if node is not None and node.type == "VAELoader":
            r.models["vae"] = {"file": ev.value(node.inputs.get("vae_name"), "VAELoader vae_name")}
        elif node is not None:
            ev.unmapped_node(node, "provides the VAE: only VAELoader is mapped")
        for out in ev.nodes.values():  # the image's consumers: save / preview are expected, the rest is listed
            if isinstance(out.inputs.get("images"), Link) and out.inputs["images"].node == dec.id and \
                    out.type in OUTPUTS:
                ev.used.add(out.id)
    if not decodes:
        r.report.append(f"{k.label()}: no VAEDecode reads its output")


def _leftovers(ev: _Evaluator, r: Imported) -> None:
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


# ============================================================================ writing
@dataclass
class _Schema:
    """What the config schema can express right now (other parts of the workbench add keys over time).

    The importer writes a key only when the schema has it, and a YAML comment otherwise.
    """

    model_files: dict[str, str]  # role -> key under model. (diffusion_model -> transformer)
    files_source: bool  # model.source=files exists (needed to use model file keys)
    loras: bool  # lora.items is accepted (not refused by the schema)
    cfg_norm: bool  # sampler.guidance=cfg_norm + sampler.cfg_norm_strength
    schedulers: set[str]  # sampler.scheduler values; empty when the key does not exist


def _schema() -> _Schema:
    from workbench.config import schema

    candidates = {
        "diffusion_model": ("transformer", "transformer_file", "transformer_path", "diffusion_model", "unet", "dit"),
        "text_encoder": ("text_encoder", "text_encoder_file", "text_encoder_path", "clip"),
        "vae": ("vae", "vae_file", "vae_path"),
    }
    hints = typing.get_type_hints(schema.ModelConfig)
    strings = {f.name for f in dataclasses.fields(schema.ModelConfig) if hints[f.name] in (str, Optional[str])}
    files = {role: next(n for n in names if n in strings) for role, names in candidates.items()
             if any(n in strings for n in names)}
    try:  # the first schema refused any item ("not available"); later ones only refuse missing files
        schema.LoraConfig(name="imported", items=[schema.LoraItem(file="x.safetensors", strength=1.0)])
        loras = True
    except (ValueError, TypeError) as err:
        loras = "not available" not in str(err)
    sampler_fields = {f.name for f in dataclasses.fields(schema.SamplerConfig)}
    kinds = getattr(schema, "SchedulerKind", None)
    return _Schema(
        model_files=files,
        files_source="files" in schema.ModelSource.__members__,
        loras=loras,
        cfg_norm="cfg_norm" in schema.Guidance.__members__ and "cfg_norm_strength" in sampler_fields,
        schedulers={k.value for k in kinds} if kinds is not None and "scheduler" in sampler_fields else set(),
    )


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
    sc = _schema()
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


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="workbench import-comfy",
                                description="Turn a ComfyUI workflow (UI / API JSON, or a PNG) into an experiment config.")
    p.add_argument("file", help="workflow .json (UI or API format) or a ComfyUI .png")
    p.add_argument("-o", "--output", help="write the YAML here (default: print it)")
    args = p.parse_args(argv)
    try:
        r = import_workflow(Path(args.file))
        text = to_yaml(r)
    except (WorkflowError, FileNotFoundError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    lines = report_lines(r)
    print(f"import report for {r.source}:" if lines else f"imported {r.source}: everything mapped", file=sys.stderr)
    for line in lines:
        print(f"  - {line}", file=sys.stderr)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
        if out.parent.name == "experiment":
            print(f"run it: workbench run \"hydra.searchpath=['file://{out.resolve().parent.parent}']\" "
                  f"experiment={out.stem}", file=sys.stderr)
        else:
            print(f"run it: copy it to conf/experiment/ (or any <dir>/experiment/ on hydra.searchpath) and use "
                  f"experiment={out.stem}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
